"""Progress of long command-line work, on a terminal only.

A line on stderr rewritten in place (count, share, rate, time left), at most a few times a
second. When stderr is not a terminal (a pipe, a log file, cron, CI) nothing is written,
so scripts and logs see only the command's own output.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self, label: str, total: int, *, stream: TextIO | None = None, interval_s: float = 0.2
    ) -> None:
        self.label, self.total = label, max(0, total)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)()) and total > 0
        self.done = 0
        self.interval_s = interval_s
        self._start = time.monotonic()
        self._shown = 0.0
        self.detail = ""

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def update(self, done: int, detail: str = "") -> None:
        """Set the count (and a short text after the figures, e.g. a second count)."""
        self.done, self.detail = done, detail
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._shown >= self.interval_s or self.done >= self.total:
            self._shown = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-6)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        pct = 100.0 * self.done / self.total
        self.stream.write(
            f"\r{self.label}: {self.done}/{self.total} ({pct:.0f} %), "
            + (f"{self.detail}, " if self.detail else "")
            + f"{rate:.1f}/s, {int(left // 60)}m{int(left % 60):02d}s left "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._shown:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
