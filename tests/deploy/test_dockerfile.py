"""The Dockerfile: hadolint-clean, and consistent with the settings, routes and packaging."""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from service.settings import ENV_PREFIX
from tests.deploy.support import (
    ROOT,
    Get,
    assert_served,
    dockerfile_stages,
    image_env,
    run_tool,
    settings_from_env,
    stage_chain,
    tool,
)

VARIANTS = ("cpu", "gpu")


def load_script(name: str) -> ModuleType:
    path = ROOT / "deploy" / "docker" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"deploy_docker_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hadolint_is_clean() -> None:
    result = run_tool(
        tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_every_ignored_hadolint_rule_is_justified() -> None:
    text = (ROOT / ".hadolint.yaml").read_text()
    ignored = yaml.safe_load(text).get("ignored", [])
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    for rule in ignored:
        assert f"{rule} " in comments, f"{rule} is ignored without a comment saying why"


def test_no_syntax_directive_that_would_pull_a_frontend() -> None:
    first = (ROOT / "Dockerfile").read_text().splitlines()[0].replace(" ", "").lower()
    assert not first.startswith("#syntax=")


@pytest.mark.parametrize("variant", VARIANTS)
def test_image_environment_is_real_settings(variant: str) -> None:
    env = image_env("runtime", variant)
    served = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    settings = settings_from_env(served)
    assert settings.host == "0.0.0.0"
    assert str(settings.model_repository) == "/models"
    assert settings.device == {"cpu": "cpu", "gpu": "cuda"}[variant]
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert {
        "LSTM_SERVE_WORKERS",
        "LSTM_SERVE_INTRA_OP_THREADS",
        "LSTM_SERVE_INFERENCE_THREADS",
    } <= (served.keys())


@pytest.mark.parametrize("variant", VARIANTS)
def test_runtime_runs_lstm_serve_as_a_numeric_non_root_user(variant: str) -> None:
    runtime = stage_chain("runtime", variant)[-1]
    assert runtime.values("USER") == ["10001:10001"]
    assert json.loads(runtime.values("ENTRYPOINT")[0]) == ["lstm-serve"]
    env = image_env("runtime", variant)
    assert runtime.values("EXPOSE") == [f"{env['LSTM_SERVE_PORT']} {env['LSTM_SERVE_GRPC_PORT']}"]
    assert runtime.values("COPY").count("models/repository /models") == 1
    assert runtime.values("STOPSIGNAL") == ["SIGTERM"]


def test_healthcheck_is_exec_form_python(app_get: Get) -> None:
    (healthcheck,) = stage_chain("runtime", "cpu")[-1].values("HEALTHCHECK")
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command == ["python", "/usr/local/lib/lstm-serve/healthcheck.py"]
    module = load_script("healthcheck")
    url = module.ready_url({"LSTM_SERVE_HOST": "0.0.0.0", "LSTM_SERVE_PORT": "8123"})
    assert url == "http://127.0.0.1:8123/v2/health/ready"
    assert module.ready_url({"LSTM_SERVE_HOST": "::1"}) == "http://[::1]:8000/v2/health/ready"
    assert_served(app_get, "/v2/health/ready")


def test_the_healthcheck_fails_when_nothing_answers() -> None:
    module = load_script("healthcheck")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        env = {"LSTM_SERVE_HOST": "127.0.0.1", "LSTM_SERVE_PORT": str(port)}
        result = run_tool(
            "env", *(f"{k}={v}" for k, v in env.items()), sys.executable, module.__file__ or ""
        )
    assert result.returncode == 1 and "not ready" in result.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_serving_requirements_hold_one_onnxruntime_and_no_torch(variant: str) -> None:
    requirements = load_script("requirements").requirements
    pyproject = ROOT / "pyproject.toml"
    wanted = requirements(pyproject, [], variant)
    names = [r.split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in wanted]
    expected = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}[variant]
    assert [n for n in names if n.startswith("onnxruntime")] == [expected]
    assert "torch" not in names
    declared = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    assert len(wanted) == len(declared)


def test_bench_requirements_add_the_bench_extra() -> None:
    requirements = load_script("requirements").requirements
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = requirements(ROOT / "pyproject.toml", ["bench"], "cpu")
    assert (
        wanted[-len(extra["optional-dependencies"]["bench"]) :]
        == (extra["optional-dependencies"]["bench"])
    )


def test_targets_the_docs_and_compose_name_exist() -> None:
    _, stages = dockerfile_stages()
    assert {"runtime", "bench", "builder"} <= {stage.name for stage in stages}
    assert stages[-1].name == "runtime", "a build with no --target must give the CPU runtime"


def test_dockerignore_keeps_checkpoints_out_of_the_context() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # The last matching rule wins: the exclusion must follow the repository's inclusion.
    assert lines.index("**/checkpoint.pt") > lines.index("!models/repository/")
    assert lines[0] == "*"
    assert Path(ROOT / "models" / "repository").is_dir()
