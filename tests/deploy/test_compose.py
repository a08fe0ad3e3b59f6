"""deploy/compose.yaml, its nginx balancer and Prometheus' scrape configuration, parsed and
checked (not run): replicas that share their sequences through Redis, behind round robin."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service.http.v1 import stream
from service.loadtest.cli import build_parser
from service.settings import Settings
from tests.deploy.support import (
    DEPLOY,
    NGINX_CONF,
    Directive,
    Get,
    assert_served,
    compose,
    dockerfile_stages,
    nginx_conf,
    run_tool,
    settings_from_env,
    stage_chain,
)

SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def replicas() -> dict[str, dict[str, Any]]:
    """The services that run the server: built from the runtime target."""
    return {
        name: service
        for name, service in services().items()
        if service.get("build", {}).get("target") == "runtime"
    }


def replica_settings(name: str) -> Settings:
    return settings_from_env(replicas()[name]["environment"])


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host IP, host port, container port) of each published port."""
    ports = []
    for mapping in service.get("ports", []):
        host_ip, host_port, container_port = str(mapping).split(":")
        ports.append((host_ip, int(host_port), int(container_port)))
    return ports


def upstream_servers(conf: Directive) -> list[str]:
    (upstream,) = conf.all("upstream")
    return [server.args[0] for server in upstream.all("server")]


def http_server(conf: Directive) -> Directive:
    """The one ``server`` block (not the upstream's ``server`` lines)."""
    (http,) = conf.all("http")
    (server,) = [d for d in http.block or [] if d.name == "server"]
    return server


def balancer_port(conf: Directive) -> int:
    (listen,) = http_server(conf).get("listen")
    return int(listen.rsplit(":", 1)[-1])


def test_at_least_two_replicas_of_one_image() -> None:
    found = replicas()
    assert len(found) >= 2, "the balancer needs several replicas to balance"
    images = {service["image"] for service in found.values()}
    assert len(images) == 1, images
    environments = [service["environment"] for service in found.values()]
    assert all(env == environments[0] for env in environments), "replicas must be alike"


def test_replicas_share_the_redis_store() -> None:
    redis = services()["redis"]
    assert redis["image"] == "redis:7"
    for name, service in replicas().items():
        url = urlsplit(service["environment"]["LSTM_SERVE_STATE_URL"])
        assert (url.scheme, url.hostname, url.port, url.path) == (
            "redis",
            "redis",
            6379,
            "/0",
        ), name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert not service.get("ports"), f"{name}: only the balancer publishes a port"


def test_replica_environment_is_real_settings() -> None:
    for name in replicas():
        settings = replica_settings(name)
        assert settings.host == "0.0.0.0", name
        assert settings.workers >= 1 and settings.model_control_mode != "explicit", name


def test_redis_persists_and_stays_inside() -> None:
    redis = services()["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    (data,) = [v for v in redis["volumes"] if v.endswith(":/data")]
    assert data.split(":")[0] in compose()["volumes"], "a named volume keeps /data"
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert all(ip == "127.0.0.1" for ip, _, _ in published(redis)), "loopback at most"


@pytest.mark.parametrize("name", ["balancer", "redis", "lstm-serve-1", "lstm-serve-2"])
def test_services_run_locked_down(name: str) -> None:
    service = services()[name]
    assert service["read_only"] is True and service["tmpfs"] == ["/tmp"], name
    assert service["cap_drop"] == ["ALL"], name
    assert "no-new-privileges:true" in service["security_opt"], name
    assert service["cpus"] and service["mem_limit"], name


def test_replicas_drain() -> None:
    for name, service in replicas().items():
        assert int(service["stop_grace_period"].removesuffix("s")) > 30, name


def test_healthcheck_is_the_images_own(app_get: Get) -> None:
    (healthcheck,) = stage_chain("runtime", "cpu")[-1].values("HEALTHCHECK")
    image_command = json.loads(healthcheck.split(" CMD ", 1)[1])
    for name, service in replicas().items():
        assert service["healthcheck"]["test"] == ["CMD", *image_command], name
    assert_served(app_get, "/v2/health/ready")


def test_build_targets_exist() -> None:
    names = {stage.name for stage in dockerfile_stages()[1]}
    for service in services().values():
        if "build" in service:
            assert service["build"]["target"] in names
            assert (DEPLOY / service["build"]["context"] / "Dockerfile").is_file()


def test_balancer_publishes_on_loopback_and_waits_for_the_replicas() -> None:
    balancer = services()["balancer"]
    assert balancer["image"] == "nginx:1.27"
    assert "./nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in balancer["volumes"]
    (port,) = published(balancer)
    assert port == ("127.0.0.1", 8000, balancer_port(nginx_conf()))
    for name in replicas():
        assert balancer["depends_on"][name]["condition"] == "service_healthy", name


def test_nginx_balances_every_replica_round_robin() -> None:
    conf = nginx_conf()
    servers = upstream_servers(conf)
    assert servers == [f"{name}:{replica_settings(name).port}" for name in replicas()]
    (upstream,) = conf.all("upstream")
    kinds = {d.name for d in upstream.block or []}
    assert not kinds & {"ip_hash", "hash", "least_conn", "random", "sticky"}, kinds
    (name,) = upstream.args
    for location in conf.all("location"):
        assert location.get("proxy_pass") == [f"http://{name}"], location.args


def test_nginx_passes_host_and_retries_only_refused_connections() -> None:
    conf = nginx_conf()
    server = http_server(conf)
    assert server.get("proxy_http_version") == ["1.1"]
    assert server.get("proxy_next_upstream") == ["error", "timeout"]
    for location in conf.all("location"):
        # A location with any proxy_set_header of its own inherits none of the server's.
        headers = {d.args[0].lower(): d.args[1:] for d in location.all("proxy_set_header")}
        assert headers["host"] == ["$host"], location.args


def test_nginx_upgrades_exactly_the_websocket_streams() -> None:
    conf = nginx_conf()
    (ws,) = [loc for loc in conf.all("location") if loc.args[0] == "~"]
    pattern = re.compile(ws.args[1])
    for route in stream.router.routes:
        path = re.sub(r"\{\w+\}", "basic_motions", route.path)  # type: ignore[attr-defined]
        assert pattern.search(path), path
    for path in ("/v1/models/basic_motions:predict", "/v2/models/basic_motions/infer"):
        assert not pattern.search(path), path
    headers = {d.args[0].lower(): d.args[1] for d in ws.all("proxy_set_header")}
    assert headers["upgrade"] == "$http_upgrade"
    (mapping,) = conf.all("map")
    assert mapping.args == ["$http_upgrade", headers["connection"]]


def test_nginx_body_limit_is_the_servers() -> None:
    conf = nginx_conf()
    (size,) = http_server(conf).get("client_max_body_size")
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", size.lower()).groups()  # type: ignore[union-attr]
    for name in replicas():
        assert int(number) * SIZE_UNITS[unit] == replica_settings(name).max_body_bytes, name


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    """``nginx -t`` where Debian's nginx is installed (1.22: no upstream ``resolve``, and the
    replicas' names resolve only inside compose: both are swapped for loopback here)."""
    nginx = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if nginx is None:
        pytest.skip("nginx is not installed")
    text = NGINX_CONF.read_text()
    text = re.sub(r"^\s*resolver .*$", "", text, flags=re.M).replace(" resolve;", ";")
    for server in upstream_servers(nginx_conf()):
        text = text.replace(server, "127.0.0.1:" + server.rsplit(":", 1)[1])
    text = text.replace("/tmp/", f"{tmp_path}/")
    (tmp_path / "nginx.conf").write_text(text)
    result = run_tool(nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"))
    assert result.returncode == 0, result.stderr


def test_allowed_hosts_admit_every_name_the_replicas_are_reached_by() -> None:
    names = {"127.0.0.1", "localhost", "balancer", *replicas()}
    for name in replicas():
        allowed = {host.lower() for host in replica_settings(name).allowed_hosts}
        assert "*" in allowed or names <= allowed, names - allowed


def test_bench_command_is_a_valid_lstm_bench_run_against_the_balancer() -> None:
    bench = services()["bench"]
    args = build_parser().parse_args(bench["command"])
    url = urlsplit(args.url)
    assert (url.hostname, url.port) == ("balancer", balancer_port(nginx_conf()))
    assert args.allow_remote, "the service name is not loopback: lstm-bench refuses it without"
    assert "balancer" in bench["depends_on"]
    assert str(args.json).startswith("/results/")
    assert any(v.endswith(":/results") for v in bench["volumes"])


def test_prometheus_scrapes_each_replica(app_get: Get) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    assert static["targets"] == [f"{name}:{replica_settings(name).port}" for name in replicas()]
    assert_served(app_get, job["metrics_path"])
    prometheus = services()["prometheus"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert all(ip == "127.0.0.1" for ip, _, _ in published(prometheus))
