"""A progress bar on stderr, fed a few times per second from the run's ticker.

tqdm is imported only when a bar is wanted, and the bar is off when stderr is
not a terminal: a benchmark's log should hold its result, not bar redraws.
"""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """The whole run (warm-up, then measurement) in tenths of a second, with live counts."""

    def __init__(self, total_s: float, enabled: bool) -> None:
        self._bar: Any = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=max(round(total_s * 10), 1),
                file=sys.stderr,
                desc="warm-up",
                leave=False,
                bar_format="{desc} {bar} {percentage:3.0f}% [{elapsed}{postfix}]",
            )
        self._shown = 0

    def update(self, elapsed_s: float, measuring: bool, ok: int, errors: int) -> None:
        if self._bar is None:
            return
        step = min(round(elapsed_s * 10), self._bar.total) - self._shown
        if measuring:
            self._bar.set_description_str("measure", refresh=False)
            self._bar.set_postfix(ok=ok, errors=errors, refresh=False)
        if step > 0:
            self._bar.update(step)
            self._shown += step

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
