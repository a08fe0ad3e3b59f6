"""Kubernetes and KServe manifests: valid for the oldest and newest Kubernetes supported, and
consistent with what the server reads (settings), serves (probe paths) and listens on."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service.grpc.health import INFERENCE_SERVICE as INFERENCE_SERVICE_NAME
from tests.deploy.support import (
    INFERENCE_SERVICE,
    KUBERNETES_VERSIONS,
    KUSTOMIZE,
    OVERLAYS,
    Get,
    assert_served,
    inference_service,
    load_all,
    one,
    pod_spec,
    render,
    run_tool,
    serving_container,
    settings_from_env,
    tool,
    workloads,
)

Docs = dict[str, list[dict[str, Any]]]
UVICORN_DRAIN_S = 30  # lstm-serve starts uvicorn with timeout_graceful_shutdown=30
# Fields of a KServe predictor that are not PodSpec fields.
KSERVE_COMPONENT_FIELDS = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric"}
SERVER_KINDS = [
    "ConfigMap",
    "Deployment",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Service",
]
# What components/redis adds: the store, its headless Service and policy, and its URL.
REDIS_KINDS = ["NetworkPolicy", "Secret", "Service", "StatefulSet"]
KINDS = {"cpu": SERVER_KINDS, "gpu": SERVER_KINDS, "with-redis": SERVER_KINDS + REDIS_KINDS}
# The Secret every server pod reads its sequence store's URL from (LSTM_SERVE_STATE_URL).
STATE_SECRET_REF = {"name": "lstm-serve-state", "key": "url", "optional": False}
# Placeholders for values that come from outside the manifests (valueFrom).
PLACEHOLDERS = {"LSTM_SERVE_STATE_URL": "redis://redis.example:6379/0"}


def validate(path: Path, version: str) -> list[str]:
    result = run_tool(tool("kubernetes-validate"), "--strict", "-k", version, str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(
    rendered: dict[str, str], overlay: str, version: str, tmp_path: Path
) -> None:
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(rendered[overlay])
    lines = validate(path, version)
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(rendered[overlay]))
    assert kinds == sorted(KINDS[overlay])
    assert len(lines) == len(kinds) and all(" passed " in line for line in lines), lines


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_inference_service_validates_as_far_as_schemas_go(version: str, tmp_path: Path) -> None:
    # No schema for the CRD: kubernetes-validate only warns. Its predictor is a pod spec
    # plus KServe's scaling fields, so validate that part as a Pod, strictly.
    (warning,) = validate(INFERENCE_SERVICE, version)
    assert "InferenceService" in warning and "schema" in warning.lower(), warning
    predictor = inference_service()["spec"]["predictor"]
    spec = {k: v for k, v in predictor.items() if k not in KSERVE_COMPONENT_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": spec}
    path = tmp_path / "predictor-pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    (line,) = validate(path, version)
    assert " passed " in line, line


def test_inference_service_is_a_v2_custom_container() -> None:
    isvc = inference_service()
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    container = serving_container(isvc)
    assert container["name"] == "kserve-container"
    assert [p["containerPort"] for p in container["ports"]] == [8000]


def secret_value(docs: list[dict[str, Any]], ref: dict[str, Any]) -> str | None:
    """A secretKeyRef's value when the Secret is among the rendered objects, else None."""
    for doc in docs:
        if doc["kind"] == "Secret" and doc["metadata"]["name"] == ref["name"]:
            if ref["key"] in doc.get("stringData", {}):
                return str(doc["stringData"][ref["key"]])
            return base64.b64decode(doc["data"][ref["key"]]).decode()
    return None


def environment(workload: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's literal environment: its ConfigMaps (envFrom), then its own env,
    with the values of the rendered Secrets it refers to."""
    container = serving_container(workload)
    config_maps = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e["valueFrom"]:
            value = secret_value(docs, e["valueFrom"]["secretKeyRef"])
            if value is not None:
                env[e["name"]] = value
    return env


def all_workloads(overlay_docs: Docs) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    return [(name, w, overlay_docs.get(name, [])) for name, w in workloads(overlay_docs)]


def test_every_environment_name_and_value_is_a_real_setting(overlay_docs: Docs) -> None:
    for name, workload, docs in all_workloads(overlay_docs):
        env = environment(workload, docs)
        names = {e["name"] for e in serving_container(workload).get("env", [])}
        settings = settings_from_env(
            {**env, **{n: PLACEHOLDERS.get(n, "1") for n in names if n not in env}}
        )
        expected_device = {"gpu": "cuda"}.get(name, "cpu")
        assert settings.device == expected_device, name
        assert settings.host == "0.0.0.0" and str(settings.model_repository) == "/models", name
        assert settings.intra_op_threads == 1, name


def test_probes_reach_real_routes_on_the_served_port(overlay_docs: Docs, app_get: Get) -> None:
    for name, workload, docs in all_workloads(overlay_docs):
        container = serving_container(workload)
        port = int(environment(workload, docs)["LSTM_SERVE_PORT"])
        by_name = {p.get("name"): p["containerPort"] for p in container["ports"]}
        # gRPC, where served, is a port of its own named grpc (KServe allows one port:
        # its manifest serves REST only, with LSTM_SERVE_GRPC_PORT=0).
        grpc_port = int(environment(workload, docs)["LSTM_SERVE_GRPC_PORT"])
        assert by_name.get("grpc", 0) == grpc_port, name
        assert [p for n, p in by_name.items() if n != "grpc"] == [port], name
        paths = {}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert by_name.get(get["port"], get["port"]) == port, (name, probe)
            assert_served(app_get, get["path"])
            paths[probe] = get["path"]
        assert paths == {
            "startupProbe": "/v2/health/ready",
            "readinessProbe": "/v2/health/ready",
            "livenessProbe": "/v2/health/live",
        }, name


def test_pods_are_locked_down(overlay_docs: Docs) -> None:
    for name, workload, docs in all_workloads(overlay_docs):
        spec = pod_spec(workload)
        container = serving_container(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 10001, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert container["securityContext"] == {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }, name
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert set(mounts) == {"/tmp", "/run/secrets/lstm-serve"}, name
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], name
        keys = volumes[mounts["/run/secrets/lstm-serve"]["name"]]
        assert keys["secret"]["secretName"] == "lstm-serve-api-keys", name
        assert mounts["/run/secrets/lstm-serve"]["readOnly"] is True, name
        env = environment(workload, docs)
        assert env["LSTM_SERVE_AUTH"] == "required", name
        assert env["LSTM_SERVE_API_KEYS_FILE"] == "/run/secrets/lstm-serve/keys", name
        assert env["LSTM_SERVE_MODEL_CONTROL_MODE"] == "none", name
        pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert spec["terminationGracePeriodSeconds"] >= pre_stop_s + UVICORN_DRAIN_S, name
        assert container["resources"]["requests"] == container["resources"]["limits"], name


def test_cpu_workers_follow_the_cpu_limit(overlay_docs: Docs) -> None:
    for name in ("cpu", "kserve"):
        workload = dict(workloads(overlay_docs))[name]
        container = serving_container(workload)
        (workers,) = [e for e in container["env"] if e["name"] == "LSTM_SERVE_WORKERS"]
        assert workers["valueFrom"]["resourceFieldRef"] == {
            "containerName": container["name"],
            "resource": "limits.cpu",
            "divisor": "1",
        }, name


def test_gpu_overlay_asks_for_a_gpu(overlay_docs: Docs) -> None:
    deployment = one(overlay_docs["gpu"], "Deployment")
    spec = pod_spec(deployment)
    container = serving_container(deployment)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("-gpu")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert spec["nodeSelector"]
    env = environment(deployment, overlay_docs["gpu"])
    assert env["LSTM_SERVE_DEVICE"] == "cuda" and env["LSTM_SERVE_WORKERS"] == "1"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_point_at_each_other(overlay_docs: Docs, overlay: str) -> None:
    docs = overlay_docs[overlay]
    deployment, service = one(docs, "Deployment"), one(docs, "Service", "lstm-serve")
    hpa, pdb = one(docs, "HorizontalPodAutoscaler"), one(docs, "PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == pod_labels
    assert pdb["spec"]["selector"]["matchLabels"] == pod_labels
    assert deployment["spec"]["selector"]["matchLabels"] == pod_labels
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    http, grpc = service["spec"]["ports"]
    assert (http["name"], http["port"], http["targetPort"]) == ("http", 8000, "http")
    assert (grpc["name"], grpc["port"], grpc["targetPort"]) == ("grpc", 8001, "grpc")
    assert grpc["appProtocol"] == "grpc"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8000"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_every_server_reads_its_store_url_from_the_secret(overlay_docs: Docs) -> None:
    for name, workload in workloads(overlay_docs):
        env = [e for e in serving_container(workload)["env"] if e["name"] == "LSTM_SERVE_STATE_URL"]
        assert len(env) == 1, name
        assert env[0]["valueFrom"] == {"secretKeyRef": STATE_SECRET_REF}, name


def test_the_store_settings_are_real_settings() -> None:
    """The store's settings as the manifests set them are read by ``Settings``."""
    example = {
        "LSTM_SERVE_STATE_URL": "rediss://redis.example:6380/0",
        "LSTM_SERVE_STATE_PASSWORD_FILE": "/run/secrets/lstm-serve-state/password",
        "LSTM_SERVE_MAX_SEQUENCES_PER_KEY": "1000",
    }
    settings_from_env(example)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replicas_are_interchangeable(overlay_docs: Docs, overlay: str) -> None:
    """No affinity anywhere; the rolling update and the HPA stay (sequences are in the store)."""
    docs = overlay_docs[overlay]
    for service in (doc for doc in docs if doc["kind"] == "Service"):
        assert service["spec"].get("sessionAffinity", "None") == "None", overlay
    deployment = one(docs, "Deployment")
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"] >= 1
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_components_are_kustomize_components() -> None:
    folders = sorted(p for p in (KUSTOMIZE / "components").iterdir() if p.is_dir())
    assert {p.name for p in folders} >= {"redis", "state-password"}
    for folder in folders:
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1alpha1", folder
        assert kustomization["kind"] == "Component", folder


def test_with_redis_runs_a_persistent_locked_down_redis(overlay_docs: Docs) -> None:
    docs = overlay_docs["with-redis"]
    redis = one(docs, "StatefulSet")
    assert redis["spec"]["replicas"] == 1
    spec = pod_spec(redis)
    (container,) = spec["containers"]
    assert container["image"] == "redis:7"
    args = container["args"]
    assert args[0] == "redis-server" and args[args.index("--appendonly") + 1] == "yes"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    (mount,) = container["volumeMounts"]
    assert (mount["name"], mount["mountPath"]) == (claim["metadata"]["name"], "/data")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "redis-cli ping" in " ".join(container[probe]["exec"]["command"]), probe
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert spec["automountServiceAccountToken"] is False


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_with_redis_wires_the_server_to_its_store_and_no_one_else(overlay_docs: Docs) -> None:
    docs = overlay_docs["with-redis"]
    redis = one(docs, "StatefulSet")
    redis_pods = redis["spec"]["template"]["metadata"]["labels"]
    server_pods = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels_match(redis["spec"]["selector"]["matchLabels"], redis_pods)
    service = one(docs, "Service", "redis")
    assert service["spec"]["clusterIP"] == "None", "headless"
    assert redis["spec"]["serviceName"] == service["metadata"]["name"]
    assert labels_match(service["spec"]["selector"], redis_pods)
    (port,) = service["spec"]["ports"]
    assert port["port"] == 6379
    # The server's URL names this Service and port.
    url = urlsplit(environment(one(docs, "Deployment"), docs)["LSTM_SERVE_STATE_URL"])
    assert (url.scheme, url.hostname, url.port) == (
        "redis",
        service["metadata"]["name"],
        port["port"],
    )
    # Only the server's pods reach Redis, on 6379.
    policy = one(docs, "NetworkPolicy", "redis")
    assert labels_match(policy["spec"]["podSelector"]["matchLabels"], redis_pods)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    selectors = [peer["podSelector"]["matchLabels"] for peer in rule["from"]]
    assert all(set(peer) == {"podSelector"} for peer in rule["from"]), "same namespace only"
    assert any(labels_match(s, server_pods) for s in selectors)
    predictor = {"serving.kserve.io/inferenceservice": inference_service()["metadata"]["name"]}
    assert any(labels_match(s, predictor) for s in selectors), "KServe's predictor pods"
    assert not any(labels_match(s, redis_pods) for s in selectors)


def with_component(tmp_path: Path, overlay: str, component: str, version: str) -> list[Any]:
    """``overlay`` with ``component`` on top, rendered and validated strictly: its documents."""
    folder = tmp_path / overlay
    folder.mkdir()
    (folder / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(KUSTOMIZE / "overlays" / overlay, folder)],
                "components": [os.path.relpath(KUSTOMIZE / "components" / component, folder)],
            }
        )
    )
    text = render(folder)
    (folder / "rendered.yaml").write_text(text)
    lines = validate(folder / "rendered.yaml", version)
    assert all(" passed " in line for line in lines), lines
    return load_all(text)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_state_password_component_mounts_the_password_file(version: str, tmp_path: Path) -> None:
    """components/state-password on top of each overlay: renders, validates strictly, and
    points LSTM_SERVE_STATE_PASSWORD_FILE at the Secret's key, mounted read-only."""
    for overlay in ("cpu", "gpu"):
        docs = with_component(tmp_path, overlay, "state-password", version)
        deployment = one(docs, "Deployment")
        container = serving_container(deployment)
        path = Path(environment(deployment, docs)["LSTM_SERVE_STATE_PASSWORD_FILE"])
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
        assert mount["readOnly"] is True
        (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == STATE_SECRET_REF["name"]
        assert volume["secret"]["items"] == [{"key": "password", "path": path.name}]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_grpc_probe_component_probes_the_grpc_port(version: str, tmp_path: Path) -> None:
    """components/grpc-probe on top of each overlay: renders, validates strictly, and
    makes readiness a grpc.health.v1 probe of the served gRPC port (the container's port
    named grpc); startup and liveness stay on HTTP."""
    for overlay in ("cpu", "gpu"):
        docs = with_component(tmp_path, overlay, "grpc-probe", version)
        deployment = one(docs, "Deployment")
        container = serving_container(deployment)
        probe = container["readinessProbe"]
        assert "httpGet" not in probe
        grpc_port = int(environment(deployment, docs)["LSTM_SERVE_GRPC_PORT"])
        by_name = {p.get("name"): p["containerPort"] for p in container["ports"]}
        assert probe["grpc"] == {"port": grpc_port, "service": INFERENCE_SERVICE_NAME}
        assert by_name["grpc"] == grpc_port
        assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
