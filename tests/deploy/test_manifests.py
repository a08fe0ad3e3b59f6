"""Kubernetes and KServe manifests: valid for the oldest and newest Kubernetes supported, and
consistent with what the server reads (settings), serves (probe paths) and listens on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    INFERENCE_SERVICE,
    KUBERNETES_VERSIONS,
    OVERLAYS,
    Get,
    assert_served,
    inference_service,
    one,
    pod_spec,
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
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
        ]
    )
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


def environment(workload: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's literal environment: its ConfigMaps (envFrom), then its own env."""
    container = serving_container(workload)
    config_maps = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def all_workloads(overlay_docs: Docs) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    return [(name, w, overlay_docs.get(name, [])) for name, w in workloads(overlay_docs)]


def test_every_environment_name_and_value_is_a_real_setting(overlay_docs: Docs) -> None:
    for name, workload, docs in all_workloads(overlay_docs):
        env = environment(workload, docs)
        names = {e["name"] for e in serving_container(workload).get("env", [])}
        settings = settings_from_env(
            {**env, **{n: "1" for n in names if n not in env}}  # valueFrom: a placeholder
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
        assert list(by_name.values()) == [port], name
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
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    hpa, pdb = one(docs, "HorizontalPodAutoscaler"), one(docs, "PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == pod_labels
    assert pdb["spec"]["selector"]["matchLabels"] == pod_labels
    assert deployment["spec"]["selector"]["matchLabels"] == pod_labels
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http", 8000, "http")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8000"
    assert annotations["prometheus.io/path"] == "/metrics"
