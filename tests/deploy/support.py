"""Helpers for the deploy tests: the tools, the manifests as data, the settings' names."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("cpu", "gpu")
INFERENCE_SERVICE = DEPLOY / "kserve" / "inferenceservice.yaml"
COMPOSE = DEPLOY / "compose.yaml"
Get = Callable[[str], httpx.Response]
# The oldest and newest Kubernetes minor versions the manifests are checked against.
KUBERNETES_VERSIONS = ("1.27", "1.37")


def tool(name: str) -> str:
    """The tool's path: beside this interpreter (the venv) first, then PATH; else skip."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]' provides it)")
    return found


def run_tool(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [doc for doc in docs if doc["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def inference_service() -> dict[str, Any]:
    docs = load_all(INFERENCE_SERVICE.read_text())
    assert len(docs) == 1
    return docs[0]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Deployment, or the predictor (a pod spec) of an InferenceService."""
    if workload["kind"] == "InferenceService":
        spec: dict[str, Any] = workload["spec"]["predictor"]
        return spec
    spec = workload["spec"]["template"]["spec"]
    return spec


def serving_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def workloads(
    overlay_docs: dict[str, list[dict[str, Any]]],
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every workload that runs the serving image: each overlay's Deployment, and KServe's."""
    for overlay, docs in overlay_docs.items():
        yield overlay, one(docs, "Deployment")
    yield "kserve", inference_service()


def settings_env_names() -> set[str]:
    return {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


def render(overlay: str) -> str:
    """``kubectl kustomize`` of one overlay, as YAML text."""
    result = run_tool(
        tool("kubectl"), "kustomize", str(DEPLOY / "kubernetes" / "overlays" / overlay)
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@dataclass
class Stage:
    """One ``FROM`` of the Dockerfile: its base, name and instructions (continuations joined)."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages, in order."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip()))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        elif keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args, stages


def stage_chain(target: str, variant: str) -> list[Stage]:
    """The stages an image of ``target`` is built from, base first, for a VARIANT."""
    args, stages = dockerfile_stages()
    args = {**args, "VARIANT": variant}
    by_name = {stage.name: stage for stage in stages}
    chain: list[Stage] = []
    name = target
    while name in by_name:
        stage = by_name[name]
        chain.insert(0, stage)
        name = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], stage.base)
    return chain


def image_env(target: str, variant: str) -> dict[str, str]:
    """The ENV an image of ``target`` starts with (``ENV A=1 B=2`` form only)."""
    env: dict[str, str] = {}
    for stage in stage_chain(target, variant):
        for args in stage.values("ENV"):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def settings_from_env(env: dict[str, str]) -> Settings:
    """Validate ``LSTM_SERVE_*`` values as the server would read them (unknown names fail)."""
    unknown = sorted(set(env) - settings_env_names())
    assert not unknown, f"not server settings: {unknown}"
    return Settings(**{name.removeprefix(ENV_PREFIX).lower(): value for name, value in env.items()})


def assert_served(app_get: Get, path: str) -> None:
    """``path`` reaches one of the app's handlers (health and metrics answer JSON or text)."""
    response = app_get(path)
    assert response.status_code != 404, f"{path} is not served by the app"
    if path.startswith("/v2/health/"):
        assert set(response.json()) & {"live", "ready"}, response.text
