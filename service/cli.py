"""``lstm-serve``: start uvicorn on the model repository.

Settings are read here, once (the ``LSTM_SERVE_*`` environment, flags over it), and
passed down: to the app, and to every worker process as the same object.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.core.repository import scan
from service.keys import check_exposure, load_keys
from service.logs import configure_logging
from service.settings import DEFAULT_REPOSITORY, ENV_PREFIX, Settings
from service.workers import (
    METRICS_FOLDER_PREFIX,
    Supervisor,
    reuse_port_supported,
    uvicorn_options,
)

log = logging.getLogger("service")

DEFAULT_MODEL_PRESET = "basic_motions"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lstm-serve",
        description="Serve the stacked-LSTM ONNX models of a model repository over HTTP. "
        f"Every flag is also an environment variable ({ENV_PREFIX}HOST, ...).",
    )
    parser.add_argument("--host", help=f"bind address ({ENV_PREFIX}HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help=f"port ({ENV_PREFIX}PORT, default 8000)")
    parser.add_argument(
        "--model-repository", help=f"<name>/<version>/ folders ({ENV_PREFIX}MODEL_REPOSITORY)"
    )
    parser.add_argument("--workers", type=int, help=f"processes ({ENV_PREFIX}WORKERS, default 1)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help=f"{ENV_PREFIX}DEVICE")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--ssl-certfile", help=f"TLS certificate, PEM ({ENV_PREFIX}SSL_CERTFILE)")
    parser.add_argument("--ssl-keyfile", help=f"TLS private key, PEM ({ENV_PREFIX}SSL_KEYFILE)")
    return parser.parse_args(argv)


def check_processes(settings: Settings) -> str:
    """What cannot work with this many processes ("" when all can).

    Explicit model control changes the models of the one process that answers the
    call: with several workers they would serve different models. Workers share
    nothing but the sequence store, so rather than broadcast the change, this
    refuses to start and says what to configure.
    """
    if settings.workers > 1 and not reuse_port_supported():
        return (
            f"{settings.workers} workers need SO_REUSEPORT (Linux or BSD); run one worker per "
            "process here and scale with replicas"
        )
    if settings.workers > 1 and settings.model_control_mode == "explicit":
        return (
            f"LSTM_SERVE_MODEL_CONTROL_MODE=explicit changes the models of the one process "
            f"that answers the call, so {settings.workers} workers would serve different "
            "models: run LSTM_SERVE_WORKERS=1 (and scale with replicas), or use "
            "LSTM_SERVE_MODEL_CONTROL_MODE=poll (every process follows the repository on "
            "disk) or none (change models by rolling out)"
        )
    return ""


def ensure_default_model(settings: Settings) -> None:
    """Train and export the default model if the shipped repository lost it.

    The repository ships it, so this normally does nothing. Training runs in a
    child process: this process must never import torch.
    """
    if settings.model_repository.resolve() != DEFAULT_REPOSITORY or scan(DEFAULT_REPOSITORY):
        return
    if importlib.util.find_spec("torch") is None:
        sys.exit(
            f"lstm-serve: {DEFAULT_REPOSITORY} holds no model and torch is not installed to "
            "train one. Run: pip install -e '.[train]' && lstm-train --preset basic_motions"
        )
    log.warning("no model in %s: training the default model first", DEFAULT_REPOSITORY)
    command = [sys.executable, "-m", "models.train", "--preset", DEFAULT_MODEL_PRESET]
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    fields = ("host", "port", "model_repository", "workers", "device", "log_level")
    flags = {
        field: getattr(args, field)
        for field in (*fields, "ssl_certfile", "ssl_keyfile")
        if getattr(args, field) is not None
    }
    try:  # the one place settings are read; every worker gets this object
        settings = Settings(**flags)
    except ValidationError as exc:
        sys.exit(f"lstm-serve: {exc}")
    configure_logging(settings.log_level, settings.log_format == "json")
    try:  # a key or exposure problem stops here, once, not in every worker
        check_exposure(settings, load_keys(settings))
    except ValueError as exc:
        sys.exit(f"lstm-serve: {exc}")
    if problem := check_processes(settings):
        sys.exit(f"lstm-serve: {problem}")
    metrics_dir = None
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker is a process with its own counters: share them through files,
        # in a folder of our own that goes when the server does.
        metrics_dir = tempfile.mkdtemp(prefix=METRICS_FOLDER_PREFIX)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        ensure_default_model(settings)
        if settings.workers > 1:
            Supervisor(settings).run()
        else:
            uvicorn.run(create_app(settings), **uvicorn_options(settings))
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
