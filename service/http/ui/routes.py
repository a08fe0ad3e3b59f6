"""Routes of the page for people: ``/`` -> ``/ui/``, the static files, the examples.

The static files are a fixed list read from the package (``static/``), so no
path from a request ever reaches the filesystem. Every UI response carries a
Content-Security-Policy that allows only this origin (scripts, styles, images,
fetches and the WebSocket), so the page provably loads nothing from elsewhere,
and ``nosniff`` so a browser never reinterprets a file's type.

Versions and models resolve as on ``/v1`` (``core/repository.py``), so the page
and the API agree on what exists.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import RedirectResponse, Response

from service.core.errors import ModelNotFound
from service.core.model import ServedModel
from service.core.repository import parse_version
from service.http.asgi import server_of

log = logging.getLogger("service.ui")

STATIC = Path(__file__).resolve().parent / "static"
EXAMPLES_FILENAME = "examples.json"  # written by models/examples.py
MAX_EXAMPLES_BYTES = 2 * 1024 * 1024
"""An examples file is a handful of sequences; anything bigger is not meant for a page."""

MAX_EXAMPLES = 64

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}

SECURITY_HEADERS = {
    # 'self' for everything; ws:/wss: because not every browser lets 'self' match
    # the WebSocket of the same host. Nothing inline, no eval, no frames.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate on every load: after an upgrade the page and its modules must match.
    "Cache-Control": "no-cache",
}


class Example(BaseModel):
    """One shipped sequence, as ``models/examples.py`` writes it."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(max_length=200)
    label: str | None = Field(default=None, max_length=200)
    timesteps: list[list[float]] = Field(min_length=1)


class ExamplesFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    examples: list[Example] = Field(max_length=MAX_EXAMPLES)


class ExamplesUnavailable(Exception):
    """Why a version offers no examples, phrased for the page (answered with 404)."""


@dataclass(frozen=True)
class _Cached:
    mtime_ns: int
    size: int
    body: bytes


_examples_cache: dict[Path, _Cached] = {}
MAX_CACHED_EXAMPLES = 16
"""Version folders whose examples are kept (the oldest entry goes first beyond): keyed
only by versions that were loaded, never by a request's name, but poll mode may load
new versions for ever. At most 16 x MAX_EXAMPLES_BYTES (2 MiB) of JSON."""


def _read_examples(model: ServedModel) -> bytes:
    """The version's examples as the JSON the page gets, parsed, checked and cached.

    Cached per version folder and revalidated by the file's mtime and size, so a
    page reload costs a ``stat``, and a fixed file is picked up without a restart.
    """
    path = model.path / EXAMPLES_FILENAME
    where = f"model {model.name!r} version {model.version}"
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ExamplesUnavailable(f"{where} ships no examples ({EXAMPLES_FILENAME})") from None
    cached = _examples_cache.get(path)
    if cached and (cached.mtime_ns, cached.size) == (stat.st_mtime_ns, stat.st_size):
        return cached.body
    if stat.st_size > MAX_EXAMPLES_BYTES:
        raise ExamplesUnavailable(
            f"{where}: {EXAMPLES_FILENAME} is {stat.st_size} bytes; the page takes at most "
            f"{MAX_EXAMPLES_BYTES}"
        )
    try:
        parsed = ExamplesFile.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        log.warning("%s is not a valid examples file: %s", path, exc)
        raise ExamplesUnavailable(f"{where}: {EXAMPLES_FILENAME} is not valid") from None
    features = model.metadata.num_features
    for i, example in enumerate(parsed.examples):
        for t, step in enumerate(example.timesteps):
            if len(step) != features:
                log.warning("%s: example %d step %d has %d features", path, i, t, len(step))
                raise ExamplesUnavailable(
                    f"{where}: example {i} step {t} has {len(step)} features; "
                    f"the model expects {features}"
                )
    body = orjson.dumps(
        {
            "model": model.name,
            "version": str(model.version),
            "examples": [e.model_dump() for e in parsed.examples],
        }
    )
    _examples_cache.pop(path, None)
    while len(_examples_cache) >= MAX_CACHED_EXAMPLES:
        del _examples_cache[next(iter(_examples_cache))]
    _examples_cache[path] = _Cached(stat.st_mtime_ns, stat.st_size, body)
    return body


def _read_static() -> dict[str, tuple[bytes, str]]:
    """Every file of ``static/`` (plain names, known types), read once at startup.

    A fixed set: a request's name is only looked up in it, so no name a client
    sends is ever stored (a cache keyed by the requested name grew by every
    unknown name: 36,000 long ones took a worker from 101 to 964 MiB).
    """
    files: dict[str, tuple[bytes, str]] = {}
    for path in sorted(STATIC.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is not None and not path.name.startswith(".") and path.is_file():
            files[path.name] = (path.read_bytes(), content_type)
    return files


STATIC_FILES = _read_static()


def _static_file(name: str) -> tuple[bytes, str] | None:
    """A file of ``static/`` by its plain name, with its content type; None if unknown."""
    return STATIC_FILES.get(name)


def _error(status: int, message: str) -> Response:
    return Response(
        orjson.dumps({"error": message}),
        status_code=status,
        media_type="application/json",
        headers=SECURITY_HEADERS,
    )


def page_address(host: str, port: int) -> str:
    """Where a person on this machine opens the page (a wildcard bind is reached on loopback)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/ui/"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Say where the page is once the models have loaded (this runs inside the app's lifespan)."""
    settings = app.state.server.settings
    log.info("the page for people: %s", page_address(settings.host, settings.port))
    yield


router = APIRouter(include_in_schema=False, lifespan=lifespan)


@router.get("/")
async def root() -> Response:
    """The service's address leads people to the page; API clients never GET ``/``."""
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
async def ui_without_slash() -> Response:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/")
async def index() -> Response:
    return await static("index.html")


@router.get("/ui/models/{name}/versions/{version}/examples")
async def examples(request: Request, name: str, version: str) -> Response:
    """The version's shipped example sequences; 404 ``{"error": ...}`` when it has none."""
    try:
        model = server_of(request).repository.get(name, parse_version(version))
        body = _read_examples(model)
    except ModelNotFound as exc:
        return _error(404, exc.message)
    except ExamplesUnavailable as exc:
        return _error(404, str(exc))
    return Response(body, media_type="application/json", headers=SECURITY_HEADERS)


@router.get("/ui/{name}")
async def static(name: str) -> Response:
    found = _static_file(name)
    if found is None:
        # The name is not echoed whole: a 30 KB name makes no 30 KB answer.
        shown = name if len(name) <= 100 else name[:100] + "..."
        return _error(404, f"the page has no file {shown!r}")
    content, content_type = found
    return Response(content, media_type=content_type, headers=SECURITY_HEADERS)
