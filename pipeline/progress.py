"""The one progress helper: a rich progress bar with an item count and frames/s.

Long work (rendering samples, ingesting episodes) reports through this, never through
scattered prints; `enabled=False` (tests, `--no-progress`, non-TTY logs) makes it silent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Bar:
    def __init__(self, progress: Progress | None, task: int | None):
        self._progress, self._task = progress, task
        self._frames = 0
        self._t0 = time.monotonic()

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def note(self, text: str) -> None:
        """Replace the text after the bar (a trainer's loss and pairs/s)."""
        if self._progress is not None:
            self._progress.update(self._task, rate=text)

    def add_frames(self, n: int) -> None:
        self._frames += n
        if self._progress is not None:
            rate = self._frames / max(time.monotonic() - self._t0, 1e-9)
            self._progress.update(self._task, rate=f"{self._frames} frames, {rate:.1f} frames/s")


@contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True, unit: str = "") -> Iterator[Bar]:
    if not enabled:
        yield Bar(None, None)
        return
    columns = [TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               TimeElapsedColumn(), TextColumn("{task.fields[rate]}")]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total, rate="")
        yield Bar(progress, task)
