"""The backtest's progress bar: rich's, on stderr, shown only on a terminal."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class ProgressBar:
    """``update(stage, fraction)`` moves one bar; nothing is drawn when stderr is not a TTY
    (a CI log gets the table only)."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._progress = Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            TextColumn("{task.percentage:>4.0f}%"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
            disable=not self.enabled,
        )
        self._task: TaskID | None = None

    def update(self, stage: str, fraction: float) -> None:
        if not self.enabled:
            return
        done = 100.0 * min(max(fraction, 0.0), 1.0)
        if self._task is None:
            self._task = self._progress.add_task(stage, total=100.0)
        self._progress.update(self._task, description=stage, completed=done)

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._progress.stop()
