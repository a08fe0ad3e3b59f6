"""deploy/compose.yaml and Prometheus' scrape configuration, parsed and checked (not run)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import yaml

from service.loadtest.cli import build_parser
from tests.deploy.support import (
    DEPLOY,
    Get,
    assert_served,
    compose,
    dockerfile_stages,
    settings_from_env,
    stage_chain,
)


def server() -> dict[str, Any]:
    service: dict[str, Any] = compose()["services"]["lstm-serve"]
    return service


def test_server_environment_is_real_settings_and_ports_match() -> None:
    settings = settings_from_env(server()["environment"])
    (mapping,) = server()["ports"]
    host_ip, _, container_port = mapping.rpartition(":")
    assert host_ip.startswith("127.0.0.1:"), "publish on loopback only"
    assert int(container_port) == settings.port
    assert settings.host == "0.0.0.0"


def test_server_runs_locked_down_and_drains() -> None:
    service = server()
    assert service["read_only"] is True and service["tmpfs"] == ["/tmp"]
    assert service["cap_drop"] == ["ALL"]
    assert int(service["stop_grace_period"].removesuffix("s")) > 30


def test_healthcheck_is_the_images_own(app_get: Get) -> None:
    (healthcheck,) = stage_chain("runtime", "cpu")[-1].values("HEALTHCHECK")
    image_command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert server()["healthcheck"]["test"] == ["CMD", *image_command]
    assert_served(app_get, "/v2/health/ready")


def test_build_targets_exist() -> None:
    names = {stage.name for stage in dockerfile_stages()[1]}
    for service in compose()["services"].values():
        if "build" in service:
            assert service["build"]["target"] in names
            assert (DEPLOY / service["build"]["context"] / "Dockerfile").is_file()


def test_bench_command_is_a_valid_lstm_bench_run_against_the_server() -> None:
    bench = compose()["services"]["bench"]
    args = build_parser().parse_args(bench["command"])
    url = urlsplit(args.url)
    assert (url.hostname, url.port) == (
        "lstm-serve",
        settings_from_env(server()["environment"]).port,
    )
    assert args.allow_remote, "the service name is not loopback: lstm-bench refuses it without"
    assert bench["depends_on"]["lstm-serve"]["condition"] == "service_healthy"
    assert str(args.json).startswith("/results/")
    assert any(v.endswith(":/results") for v in bench["volumes"])


def test_prometheus_scrapes_the_servers_metrics(app_get: Get) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    port = settings_from_env(server()["environment"]).port
    assert static["targets"] == [f"lstm-serve:{port}"]
    assert_served(app_get, job["metrics_path"])
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
