"""A small progress bar on stderr, shown only on a terminal."""

from __future__ import annotations

import sys
import time
from types import TracebackType


class ProgressBar:
    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.enabled = sys.stderr.isatty()
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, stage: str, fraction: float) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        filled = int(self.width * min(max(fraction, 0.0), 1.0))
        bar = "#" * filled + "-" * (self.width - filled)
        sys.stderr.write(f"\r[{bar}] {fraction:4.0%} {stage:<16} {now - self.started:5.1f}s")
        sys.stderr.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * (self.width + 40) + "\r")
            sys.stderr.flush()
