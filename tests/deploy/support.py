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
KUSTOMIZE = DEPLOY / "kubernetes"
OVERLAYS = ("cpu", "gpu", "with-redis")
INFERENCE_SERVICE = DEPLOY / "kserve" / "inferenceservice.yaml"
COMPOSE = DEPLOY / "compose.yaml"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
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


def one(docs: list[dict[str, Any]], kind: str, app: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (of the app labelled ``app.kubernetes.io/name``, if given)."""
    matches = [
        doc
        for doc in docs
        if doc["kind"] == kind
        and app in (None, doc["metadata"].get("labels", {}).get("app.kubernetes.io/name"))
    ]
    assert len(matches) == 1, f"expected one {kind} of {app or 'any app'}, found {len(matches)}"
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


def render(overlay: str | Path) -> str:
    """``kubectl kustomize`` of one overlay (a name, or a kustomization's folder), as YAML."""
    path = overlay if isinstance(overlay, Path) else KUSTOMIZE / "overlays" / overlay
    result = run_tool(tool("kubectl"), "kustomize", str(path))
    assert result.returncode == 0, result.stderr
    return result.stdout


@dataclass
class Directive:
    """One nginx directive: its name, arguments and, for a block, what it holds."""

    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        """Every directive called ``name`` in this block, at any depth."""
        found = []
        for child in self.block or []:
            if child.name == name:
                found.append(child)
            found.extend(child.all(name))
        return found

    def get(self, name: str) -> list[str]:
        """The arguments of the one directive ``name`` directly in this block."""
        (match,) = [child for child in self.block or [] if child.name == name]
        return match.args


def nginx_conf(path: Path = NGINX_CONF) -> Directive:
    """An nginx configuration file as a tree under a root block (no includes, no ``${}``)."""
    text = re.sub(r"#[^\n]*", "", path.read_text())
    tokens = re.findall(r'"[^"]*"|\'[^\']*\'|[{};]|[^\s{};"\']+', text)
    stack = [Directive("", [], [])]
    words: list[str] = []
    for token in tokens:
        if token in ("{", ";"):
            directive = Directive(words[0], words[1:], [] if token == "{" else None)
            assert stack[-1].block is not None
            stack[-1].block.append(directive)
            if token == "{":
                stack.append(directive)
            words = []
        elif token == "}":
            assert not words, f"unterminated directive {words}"
            stack.pop()
        else:
            words.append(token[1:-1] if token[0] in "\"'" else token)
    assert len(stack) == 1 and not words, "unbalanced braces"
    return stack[0]


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
    # Read from the environment, as the server does: lists are JSON there.
    ours = {name for name in os.environ if name.startswith(ENV_PREFIX)}
    with pytest.MonkeyPatch.context() as patch:
        for name in ours:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return Settings()


def assert_served(app_get: Get, path: str) -> None:
    """``path`` reaches one of the app's handlers (health and metrics answer JSON or text)."""
    response = app_get(path)
    assert response.status_code != 404, f"{path} is not served by the app"
    if path.startswith("/v2/health/"):
        assert set(response.json()) & {"live", "ready"}, response.text
