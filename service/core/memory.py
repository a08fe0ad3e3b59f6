"""The process's allocator: memory a large request used goes back to the system.

glibc serves allocations above its mmap threshold with ``mmap`` and returns
them on free, but it raises that threshold each time such a block is freed
(up to 32 MiB), after which a request's buffers come from the heap and stay
resident when freed: measured, a worker held 100+ MiB after one large request
that it had long answered. Fixing the threshold (``mallopt``, as the
``MALLOC_MMAP_THRESHOLD_`` variable does) keeps every large buffer an ``mmap``
that is unmapped when freed; the trim threshold returns the heap's free top.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def fix_malloc_thresholds(threshold_bytes: int) -> bool:
    """Set glibc's mmap and trim thresholds; False where there is no glibc (or 0 asked)."""
    if threshold_bytes <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): its allocator is its own
        log.info("no glibc mallopt here; malloc thresholds left as they are")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold_bytes)) and bool(
        mallopt(M_TRIM_THRESHOLD, threshold_bytes)
    )
    if not done:
        log.warning("mallopt refused a threshold of %d bytes", threshold_bytes)
    return done
