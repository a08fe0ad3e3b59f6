"""prometheus_client's multiprocess files, made to survive a full or read-only disk.

With several workers each process keeps its metrics in files under
``PROMETHEUS_MULTIPROC_DIR`` (the CLI puts that folder in the system's temporary
directory, in containers often a memory-backed ``/tmp``). prometheus_client
grows a file with ``truncate`` (a sparse file) and writes it through ``mmap``:
when the filesystem is full, the first write to a page that has no block gets
SIGBUS and the worker dies, and the supervisor restarts it into the same death.

``install()`` (run when ``service`` is imported, before any metric exists):

- **preallocates** every file's blocks (``posix_fallocate``) before it is mapped
  or grown, so a full disk is an ``OSError`` at that moment, never a SIGBUS later;
- **survives** a failed metrics write: the value is kept in memory, the failure is
  logged (once per minute at most) and counted, and the file is tried again (once
  per second at most), so the metrics recover when space returns;
- **reports** it: ``problem()`` says what failed (readiness shows it as a warning,
  and ``/metrics`` carries ``lstm_metrics_write_failures_total``).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from typing import Any

log = logging.getLogger("service.metrics")

_RETRY_S = 1.0
_LOG_EVERY_S = 60.0

_state_lock = threading.Lock()
failures = 0
"""Metrics writes that failed in this process (counted; the request goes on)."""
_last_error = ""
_last_failure = 0.0
_last_logged = 0.0


def problem() -> str:
    """Why metrics are not being recorded ("" when they are, or were within the last minute)."""
    if failures and time.monotonic() - _last_failure < _LOG_EVERY_S:
        return f"metrics are not being written to PROMETHEUS_MULTIPROC_DIR: {_last_error}"
    return ""


def _failed(exc: BaseException) -> None:
    global failures, _last_error, _last_failure, _last_logged
    with _state_lock:
        failures += 1
        _last_error = f"{type(exc).__name__}: {exc}"
        now = _last_failure = time.monotonic()
        if now - _last_logged < _LOG_EVERY_S:
            return
        _last_logged = now
    log.error(
        "a metrics write failed (%s); serving goes on, the metric is kept in memory and "
        "written again once the folder takes it (%d failures so far)",
        _last_error,
        failures,
    )


def _preallocate(fd: int, size: int) -> None:
    """Reserve the blocks of ``size`` bytes (ENOSPC now rather than SIGBUS later)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def install() -> None:
    """Swap prometheus_client's multiprocess value class for the safe one (idempotent)."""
    from prometheus_client import mmap_dict, values

    base = values.ValueClass
    if not getattr(base, "_multiprocess", False) or getattr(base, "_safe", False):
        return

    class PreallocatedMmapedDict(mmap_dict.MmapedDict):
        def __init__(self, filename: str, read_mode: bool = False) -> None:
            if not read_mode:
                with open(filename, "a+b") as f:
                    size = os.fstat(f.fileno()).st_size
                    try:
                        _preallocate(f.fileno(), max(size, mmap_dict._INITIAL_MMAP_SIZE))
                    except OSError:
                        if size == 0:  # an empty file would break every scrape's reading
                            os.unlink(filename)
                        raise
            super().__init__(filename, read_mode)  # type: ignore[no-untyped-call]

        def _init_value(self, key: str) -> None:
            encoded = key.encode("utf-8")
            needed = self._used + 4 + len(encoded) + (8 - (len(encoded) + 4) % 8) + 16
            capacity = self._capacity
            while needed > capacity:
                capacity *= 2
            if capacity != self._capacity:
                _preallocate(self._f.fileno(), capacity)
            super()._init_value(key)  # type: ignore[no-untyped-call]

    values.MmapedDict = PreallocatedMmapedDict  # type: ignore[attr-defined]

    class SafeValue(base):  # type: ignore[misc,valid-type]
        _safe = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._broken_since: float | None = None
            try:
                super().__init__(*args, **kwargs)
            except (OSError, ValueError) as exc:
                self._value, self._timestamp = 0.0, 0.0
                self._broken(exc)

        def _broken(self, exc: BaseException) -> None:
            self._broken_since = time.monotonic()
            _failed(exc)

        def _retry(self) -> bool:
            """Back on file, with the value kept meanwhile (True), or still in memory."""
            if time.monotonic() - (self._broken_since or 0.0) < _RETRY_S:
                return False
            value, timestamp = self._value, self._timestamp
            try:
                self._MmapedValue__reset()
                self._file.write_value(self._key, value, timestamp)
            except (OSError, ValueError) as exc:
                self._value, self._timestamp = value, timestamp
                self._broken(exc)
                return False
            self._value, self._timestamp = value, timestamp
            self._broken_since = None
            return True

        def inc(self, amount: float) -> None:
            if self._broken_since is not None and not self._retry():
                self._value += amount
                return
            try:
                super().inc(amount)
            except (OSError, ValueError) as exc:
                self._broken(exc)

        def set(self, value: float, timestamp: float | None = None) -> None:
            if self._broken_since is not None and not self._retry():
                self._value, self._timestamp = value, timestamp or 0.0
                return
            try:
                super().set(value, timestamp)
            except (OSError, ValueError) as exc:
                self._broken(exc)

        def get(self) -> float:
            if self._broken_since is not None:
                return float(self._value)
            return float(super().get())

    values.ValueClass = SafeValue
