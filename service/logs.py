"""Process logging: one JSON object per line (or plain text), set up once per process.

``lstm-serve`` and every worker process call ``configure_logging`` at start;
the access log itself is written by ``http/asgi.py``'s ``RequestObserver``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request fields passed as ``extra``."""

    _FIELDS = (
        "request_id",
        "method",
        "path",
        "model",
        "version",
        "status",
        "duration_ms",
        # who (issue 14): the client's address and the API key's id, never the key
        "client",
        "key_id",
        "reason",
        "action",
        "outcome",
        # WebSocket sessions
        "accepted",
        "close_code",
        "received",
        "sent",
    )

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in self._FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
}
"""C0 and C1 control characters (newline and the terminal's escape included) as escapes."""


class TextFormatter(logging.Formatter):
    """``time level logger message``, with control characters in the line escaped.

    A request path can carry ``%0A`` or escape bytes; written raw, they forge
    access-log lines or drive the reader's terminal. JSON escapes them by
    itself; plain text needs this. A traceback, appended after the line, keeps
    its own newlines.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_CONTROL)


def without_query_strings(record: logging.LogRecord) -> bool:
    """Drop the query string from uvicorn's own lines (a filter; it never drops a line).

    uvicorn writes ``"WebSocket /path?query" 401`` with the whole URL, and a URL
    can carry a secret (``?token=...``). Our own lines log the path only.
    """
    if record.name.startswith("uvicorn") and isinstance(record.args, tuple):
        record.args = tuple(
            a.split("?", 1)[0] + "?..." if isinstance(a, str) and "?" in a else a
            for a in record.args
        )
    return True


def configure_logging(level: str, json_logs: bool = True) -> None:
    """Root logging for the process; uvicorn's own loggers propagate to it."""
    handler = logging.StreamHandler()
    if json_logs:
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = TextFormatter()
    handler.setFormatter(formatter)
    handler.addFilter(without_query_strings)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # RequestObserver writes the access log (with request ids); uvicorn's would double it.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers[:] = []
    uvicorn_access.propagate = False
