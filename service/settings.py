"""Every server setting, in one place, read once at startup.

Each field is also an environment variable with the ``LSTM_SERVE_`` prefix
(``model_repository`` -> ``LSTM_SERVE_MODEL_REPOSITORY``). The CLI's flags only
override these; nothing else in the service reads the environment.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.version_policy import VersionPolicy

Policy = Annotated[
    VersionPolicy,
    NoDecode,
    BeforeValidator(lambda v: VersionPolicy.parse(v) if isinstance(v, str) else v),
    PlainSerializer(str),
]
"""A version policy, parsed once from its text (``latest:2``) into its typed form."""

ENV_PREFIX = "LSTM_SERVE_"

# The repository shipped with the project, beside this package. An installed
# image points LSTM_SERVE_MODEL_REPOSITORY elsewhere (see the Dockerfile).
DEFAULT_REPOSITORY = Path(__file__).resolve().parent.parent / "models" / "repository"

Device = Literal["auto", "cpu", "cuda"]
LogLevel = Literal["debug", "info", "warning", "error"]


class ModelBatching(BaseModel):
    """One model's departures from the server-wide batching settings (unset: inherit)."""

    model_config = ConfigDict(extra="forbid")

    dynamic_batching: bool | None = None
    max_batch_size: int | None = Field(default=None, ge=1)
    max_queue_delay_ms: float | None = Field(default=None, ge=0, le=1000)
    batch_bucket_ratio: float | None = Field(default=None, gt=1)


class Settings(BaseSettings):
    """Server configuration. Defaults suit one uvicorn worker on a small CPU box."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # Network
    host: str = Field(
        default="127.0.0.1",
        description="bind address; 0.0.0.0 in a container (beyond loopback, keys are required "
        "unless auth is off)",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="the port served")
    workers: int = Field(
        default=1,
        ge=1,
        description="worker processes, each with its own SO_REUSEPORT listening socket "
        "(service/workers.py); they share nothing but the sequence store (state_url)",
    )

    # Models
    model_repository: Path = Field(
        default=DEFAULT_REPOSITORY,
        description="the model repository: <name>/<version>/ folders with model.onnx and "
        "metadata.json; by default models/repository beside the package",
    )
    version_policy: Policy = Field(
        default=VersionPolicy("latest"),
        description="versions served per model: latest:N, all, specific:1,2",
    )
    model_version_policies: dict[str, Policy] = Field(
        default_factory=dict, description='per-model policies, JSON: {"name": "all"}'
    )
    unload_drain_s: float = Field(
        default=30.0, gt=0, description="how long an unload waits for requests in flight"
    )

    # onnxruntime
    device: Device = Field(
        default="auto",
        description="auto: CUDA if onnxruntime offers it, else CPU; cuda: ask for CUDA "
        "(falls back to CPU with a warning); cpu: CPU only",
    )
    intra_op_threads: int = Field(
        default=1,
        ge=0,
        description="threads inside one onnxruntime call; 1 scales best with one worker "
        "per core; with one worker on a multi-core machine, raise it to use the other "
        "cores (onnxruntime's own default, 0, sizes the pool to the host, not the container)",
    )
    inter_op_threads: int = Field(
        default=1, ge=0, description="onnxruntime's inter-op threads (0: its own default)"
    )
    inference_threads: int = Field(
        default=1,
        ge=1,
        description="onnxruntime calls in flight at once per model version, on threads of "
        "its own, so models never wait for each other; with one worker per core, 1 "
        "(measured: 2 only adds GIL and scheduler contention)",
    )

    # Dynamic batching (service/core/batching.py), per model version
    dynamic_batching: bool = Field(
        default=True, description="merge concurrent requests into one onnxruntime call"
    )
    max_batch_size: int = Field(
        default=32,
        ge=1,
        description="sequences per merged call; the default model gains nothing beyond ~32",
    )
    max_queue_delay_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="how long a non-full batch may wait for company; 0: run as soon as an "
        "inference thread is free (batches still grow under load, while threads are busy)",
    )
    batch_bucket_ratio: float = Field(
        default=2.0,
        gt=1,
        description="requests are batched with others whose padded length is within this "
        "factor, so short sequences do not pay for a long one's padding",
    )

    model_batching: dict[str, ModelBatching] = Field(
        default_factory=dict,
        description='per-model overrides, JSON: {"sunspots": {"max_batch_size": 8, '
        '"max_queue_delay_ms": 2}}',
    )

    # Request limits: every payload and every wait is bounded.
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="a request body, as sent and again once decompressed (413 beyond)",
    )
    max_instances: int = Field(default=1024, ge=1, description="sequences in one request")
    max_timesteps: int = Field(default=10_000, ge=1, description="timesteps in one sequence")
    max_queue_size: int = Field(
        default=256, ge=1, description="requests waiting for inference before 503s"
    )
    max_connections: int = Field(
        default=2048,
        ge=1,
        description="open connections (and requests) per worker process, the new one "
        "counted; at the limit a complete request head closes the oldest connection that "
        "has not sent one, and only when none is idle gets a JSON 503; health and /metrics "
        "are always served (http/connections.py)",
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="a request still queued past this gets a 503"
    )

    # Connections (issue 13): every connection has a clock and a size.
    head_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="a connection must deliver a whole request head (request line and "
        "headers) within this many seconds of opening, and of its previous response on "
        "keep-alive; bytes arriving do not reset it (408 and close, as nginx's "
        "client_header_timeout)",
    )
    keep_alive_timeout_s: float = Field(
        default=5.0, gt=0, description="an idle keep-alive connection closes after this"
    )
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        description="request line plus headers; beyond it a 431 and the connection closes",
    )
    lingering_close_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="an over-limit body is read and discarded up to this many bytes before "
        "its 413, so clients that send the whole body first (urllib, requests) can read it "
        "(nginx's lingering close); a longer body gets the 413 and a closed connection",
    )
    lingering_close_s: float = Field(
        default=5.0, ge=0, description="how long that discarding may take at most"
    )
    max_websockets: int = Field(
        default=256, ge=1, description="open WebSocket streams per worker process (1013 beyond)"
    )
    websocket_idle_timeout_s: float = Field(
        default=60.0, gt=0, description="a stream that sends no message this long is closed"
    )
    max_websocket_message_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="one WebSocket message, after permessage-deflate decompression (1009 beyond)",
    )
    websocket_per_message_deflate: bool = Field(
        default=True, description="offer permessage-deflate (bounded by the message limit)"
    )

    # Cost bounds (issue 12): what one request may cost, in memory and in compute.
    # See docs/limits.md for the worst case they add up to.
    max_request_timesteps: int = Field(
        default=262_144,
        ge=1,
        description="real timesteps of one request, the sum of its sequences' lengths "
        "(422 beyond): bounds its compute (~1.4 us each for the default model on one core)",
    )
    max_call_cells: int = Field(
        default=65_536,
        ge=1,
        description="padded cells (batch x timesteps) of one onnxruntime call: bigger work "
        "runs as several calls (length buckets, row groups, and time chunks of "
        "unidirectional models that carry (h, c) on), so a call's memory is bounded; a "
        "bidirectional sequence longer than this is refused with a 422",
    )
    max_input_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="a request's decoded input x as float32 (batch x timesteps x features x "
        "4 bytes, padded), checked from the shape before it is allocated, so an FP16 tensor "
        "or a ragged /v1 batch cannot decode into more (422 on /v1, 400 on V2)",
    )
    max_json_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="a JSON body (or V2's JSON header), after decompression: parsed into "
        "Python objects it takes up to ~30x this (measured, deeply nested small numbers), so "
        "it is refused with a 413 beyond, before parsing; large tensors go as V2 binary",
    )
    json_thread_bytes: int = Field(
        default=256 * 1024,
        ge=0,
        description="JSON bodies larger than this are parsed on a worker thread, so the "
        "event loop keeps serving other requests meanwhile",
    )
    max_large_requests: int = Field(
        default=1,
        ge=1,
        description="requests with a body over large_request_bytes (or of undeclared "
        "size) served at once per worker; others wait for a place within their deadline, "
        "then get 503. What keeps a worker's memory within one large request's bound",
    )
    large_request_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="a body (as sent) over this is a large request (max_large_requests); "
        "32 sequences x 100 steps is ~220 KB of JSON, 77 KB binary",
    )
    malloc_threshold_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=0,
        le=32 * 1024 * 1024,
        description="glibc's mmap and trim thresholds, fixed at startup, so buffers of a "
        "large request are returned to the system when freed (glibc otherwise raises the "
        "threshold and keeps them); 4 MiB keeps an ordinary call's buffers (32 x 100 "
        "cells: 3.3 MB) off mmap, where 128 KiB cost them page faults; 0: glibc's default",
    )
    memory_arena: Literal["off", "shrink", "on"] = Field(
        default="off",
        description="onnxruntime's CPU memory arena. off: a call's buffers are freed when "
        "it ends (measured as fast as on); shrink: arena kept, shrunk after every call; "
        "on: onnxruntime's default, which keeps the largest call's memory for good",
    )

    # Server-held sequences (service/core/state/, docs/sequences.md)
    state_url: SecretStr | None = Field(
        default=None,
        description="the shared sequence store: redis://[user:password@]host:6379/0 (rediss:// "
        "for TLS). Set, every worker of every replica continues any sequence; unset, sequences "
        "live in the process, and with workers > 1 server-held sequences are refused",
    )
    state_password_file: Path | None = Field(
        default=None,
        description="a file holding the store's password (a mounted Secret), read once at "
        "startup; overrides a password in state_url",
    )
    state_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="one store call (and a wait for one of its connections) at most; beyond, "
        "the chunk gets a 503 with Retry-After and changes nothing",
    )
    state_max_connections: int = Field(
        default=64, ge=1, description="connections to the store per worker process"
    )
    max_sequences: int = Field(
        default=10_000,
        ge=1,
        description="server-held sequences live at once, in total (in the store: across "
        "every replica sharing it); 429 beyond",
    )
    max_sequences_per_key: int = Field(
        default=1_000,
        ge=1,
        description="server-held sequences one API key may have live at once (429 beyond); "
        "not applied when keys are off",
    )
    sequence_idle_timeout_s: float = Field(
        default=300.0, gt=0, description="a sequence idle this long is evicted"
    )

    # Security (service/http/security.py, docs/security.md)
    api_keys: list[str] = Field(
        default_factory=list,
        description='API keys, JSON list of "id:scopes:secret" (scopes: inference, admin, '
        'comma-separated), e.g. ["ci:inference:<32+ random chars>"]; the id is what logs name',
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="a file of API keys, one id:scopes:secret per line (# comments), e.g. a "
        "mounted Kubernetes Secret; read once at startup, added to api_keys",
    )
    auth: Literal["auto", "required", "off"] = Field(
        default="auto",
        description="auto: keys are checked when any are configured, and a non-loopback bind "
        "without keys refuses to start; required: refuse to start without keys; off: no keys "
        "checked (only behind something that authenticates)",
    )
    metrics_auth: bool = Field(
        default=False, description="true: /metrics needs a key too (health probes never do)"
    )
    model_control_mode: Literal["none", "explicit", "poll"] = Field(
        default="none",
        description="Triton's --model-control-mode: none: load/unload refused (403); "
        "explicit: allowed with the admin scope; poll: the repository is rescanned every "
        "model_control_poll_s and new versions are loaded, retired ones unloaded",
    )
    model_control_poll_s: float = Field(
        default=15.0, ge=1, le=3600, description="rescan period in poll mode"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description='Host header allow-list (DNS rebinding), JSON list, ports ignored, "*" '
        "for any; empty: localhost, 127.0.0.1 and ::1 when bound to loopback, any otherwise",
    )
    cors_allow_origins: list[str] = Field(
        default_factory=list,
        description="origins (scheme://host[:port]) whose pages may call the API (CORS); "
        "empty: only same-origin pages; any other Origin is refused with 403",
    )
    ssl_certfile: Path | None = Field(
        default=None, description="TLS certificate chain (PEM); with ssl_keyfile, serve HTTPS"
    )
    ssl_keyfile: Path | None = Field(default=None, description="TLS private key (PEM)")

    # Hostile clients, round two (issue 26; http/connections.py, http/body.py): unread
    # answers, one address's share of the connections, and slow uploads.
    write_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="a connection whose client takes none of its answer for this long (the "
        "unsent bytes do not shrink) is closed, and its unsent answer freed",
    )
    max_unsent_bytes: int = Field(
        default=128 * 1024 * 1024,
        ge=1024 * 1024,
        description="answer bytes waiting for slow or absent readers, per worker process, in "
        "total; beyond it the connections stalled longest are closed (checked about every "
        "second), so unread answers hold at most this (plus one answer) of memory",
    )
    max_connections_per_address: int = Field(
        default=256,
        ge=1,
        description="requests in flight (connections with an unfinished request) per client "
        "address per worker process; a request head beyond it gets a JSON 503 and the "
        "connection closes, so one address cannot take max_connections from the others",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description='proxies (addresses or networks, JSON list, e.g. ["10.0.0.0/8"]) whose '
        "X-Forwarded-For names the client for max_connections_per_address; empty: the peer "
        "address is the client",
    )
    max_unsent_bytes_per_connection: int = Field(
        default=32 * 1024 * 1024,
        ge=64 * 1024,
        description="answer bytes waiting on one connection whose client took none of them "
        "since the previous sweep (about a second); beyond it the connection is closed at "
        "that sweep, without waiting for write_timeout_s or the total max_unsent_bytes",
    )
    min_upload_bytes_per_s: int = Field(
        default=16 * 1024,
        ge=0,
        description="the slowest a request body may arrive, after min_upload_grace_s: a body "
        "gets min_upload_grace_s plus one second per this many bytes received (Apache's "
        "mod_reqtimeout MinRate); slower gets a 408 and the connection closes, well before "
        "request_timeout_s; 0: only request_timeout_s bounds an upload",
    )
    min_upload_grace_s: float = Field(
        default=5.0,
        ge=0,
        description="the time a body has before min_upload_bytes_per_s is applied, so small "
        "bodies on slow links are not refused: with 5 s and 16 KiB/s a body of N bytes may "
        "take 5 s + N / 16 KiB (a 64 KiB one 9 s); request_timeout_s still bounds every body",
    )

    # gRPC (service/grpc/, docs/protocols.md): the Open Inference Protocol as Triton's
    # GRPCInferenceService, beside HTTP in every worker process.
    grpc_enabled: bool = Field(
        default=True, description="serve gRPC on grpc_port too (false: HTTP only)"
    )
    grpc_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="the gRPC port (Triton's 8001), on host, with the same TLS and keys as "
        "HTTP; 0: no gRPC. Messages are bounded by max_body_bytes both ways",
    )
    grpc_max_concurrent_streams: int = Field(
        default=100,
        ge=1,
        description="calls in flight on one gRPC connection (HTTP/2 streams); a client "
        "waits for one to finish before it starts another",
    )
    grpc_max_concurrent_rpcs: int = Field(
        default=1024,
        ge=1,
        description="gRPC calls in flight per worker process, streams included; beyond it "
        "a call gets RESOURCE_EXHAUSTED",
    )
    grpc_stream_idle_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="a ModelStreamInfer stream that sends no message this long ends with "
        "DEADLINE_EXCEEDED (as websocket_idle_timeout_s closes an idle WebSocket)",
    )

    # Measurement
    cpu_budget: bool = Field(
        default=False,
        description="charge each worker's CPU to the steps of the request path, where each "
        "runs (lstm_cpu_budget_seconds_total on /metrics; the benchmark's budget rows). "
        "Costs 3-14 % of a request's CPU; off in production",
    )

    # Logging
    log_level: LogLevel = Field(default="info", description="the lowest level logged")
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="json: one object per line, for log pipelines; text: for people (control "
        "characters escaped)",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together: set both or neither")
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)  # ValueError names the bad entry
        return value
