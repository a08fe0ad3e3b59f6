"""What a load run is asked to do, and where it may send traffic.

The spec is a frozen dataclass so that a result can carry the exact request
that produced it, and a sweep can derive its points with ``dataclasses.replace``.
Validation lives here, before any socket opens, so a bad spec fails with a
message instead of a half-run benchmark.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

Protocol = Literal["v1", "v2-json", "v2-binary"]
PROTOCOLS: tuple[Protocol, ...] = ("v1", "v2-json", "v2-binary")
DEFAULT_URL = "http://127.0.0.1:8000"


class SpecError(ValueError):
    """A spec that cannot be run as given; the message says what to change."""


@dataclass(frozen=True)
class LoadSpec:
    """One load run: the target, the request shape, the loop and its bounds."""

    url: str = DEFAULT_URL
    model: str = "basic_motions"
    protocol: Protocol = "v1"
    batch: int = 1
    timesteps: int = 50
    features: int | None = None  # None: ask the server (GET /v2/models/{m})
    return_sequences: bool = False
    concurrency: int = 16  # closed loop connections; open loop: connections opened up front
    rate: float | None = None  # set: open loop at this many req/s
    max_in_flight: int = 256
    duration_s: float = 10.0
    max_requests: int | None = None
    warmup_s: float = 1.0
    timeout_s: float = 10.0
    seed: int = 0
    payloads: int = 8  # distinct random bodies, sent round-robin
    allow_remote: bool = False
    api_key: str | None = None  # sent as "Authorization: Bearer <key>" when set

    def auth_headers(self) -> tuple[tuple[str, str], ...]:
        return (("Authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    @property
    def open_loop(self) -> bool:
        return self.rate is not None


@dataclass(frozen=True)
class Target:
    """Host and port to connect to, and the ``Host`` header to send."""

    host: str
    port: int
    authority: str


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1: the only addresses traffic may go to."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_target(url: str, allow_remote: bool = False) -> Target:
    """Split ``http://host[:port]`` and refuse a non-loopback host unless allowed.

    Load traffic is heavy by design; sending it somewhere by mistake (a typo, a
    copied production URL) is the failure this check exists to prevent.
    """
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise SpecError(f"URL {url!r}: only plain http:// is supported, not {parts.scheme!r}")
    if parts.path not in ("", "/") or parts.query:
        raise SpecError(f"URL {url!r}: give only scheme, host and port (no path or query)")
    host = parts.hostname
    if not host:
        raise SpecError(f"URL {url!r} has no host")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise SpecError(f"URL {url!r}: {exc}") from None
    if not allow_remote and not is_loopback(host):
        raise SpecError(
            f"refusing to send load to {host!r}: it is not a loopback address "
            "(127.0.0.0/8, localhost, ::1); pass --allow-remote (allow_remote=True) "
            "if you really mean to load that host"
        )
    return Target(host, port, parts.netloc)


def validate(spec: LoadSpec) -> Target:
    """Check every bound of ``spec``; return where to connect."""
    target = parse_target(spec.url, spec.allow_remote)
    if spec.protocol not in PROTOCOLS:
        raise SpecError(f"protocol {spec.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    positive = {
        "batch": spec.batch,
        "timesteps": spec.timesteps,
        "concurrency": spec.concurrency,
        "max_in_flight": spec.max_in_flight,
        "payloads": spec.payloads,
    }
    for name, value in positive.items():
        if value < 1:
            raise SpecError(f"{name} must be at least 1, not {value}")
    if spec.features is not None and spec.features < 1:
        raise SpecError(f"features must be at least 1, not {spec.features}")
    if spec.rate is not None and not spec.rate > 0:
        raise SpecError(f"rate must be a positive number of requests/s, not {spec.rate}")
    if spec.max_requests is not None and spec.max_requests < 1:
        raise SpecError(f"max_requests must be at least 1, not {spec.max_requests}")
    if not spec.duration_s > 0 or spec.warmup_s < 0 or not spec.timeout_s > 0:
        raise SpecError("duration and timeout must be > 0 seconds and warm-up >= 0")
    return target
