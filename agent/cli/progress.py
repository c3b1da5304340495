"""Progress on a terminal: one self-updating line on stderr, throttled; silent otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

MiB = 1024 * 1024


class ProgressLine:
    def __init__(self, label: str, *, stream: TextIO | None = None, total: int | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.label, self.total = label, total
        self.done = 0
        self.start = self._last = time.monotonic()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last >= 0.2:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / MiB / max(now - self.start, 1e-6)
        of = f" of {self.total / MiB:,.0f}" if self.total else ""
        self.stream.write(f"\r{self.label}: {self.done / MiB:,.1f}{of} MiB ({rate:,.0f} MiB/s)  ")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.done:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
