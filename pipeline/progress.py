"""The one progress helper: a rich progress bar on a terminal, plain periodic lines elsewhere.

Long work (rendering samples, ingesting episodes, training) reports through this, never
through scattered prints; `enabled=False` (tests, `--no-progress`) makes it silent.

On a terminal (stderr) it is a live rich bar with an item count and frames/s. When stderr
is not a terminal (a pipe, a log file, a CI job) a live bar would print nothing until the
end, so the same state is written as one plain line every `every_s` seconds (default 5,
or `$LAWAM_PROGRESS_EVERY`) and once at the end:

    ingest: 120/400 episodes, 3.1/s, eta 90 s, 5400 frames (41.2 frames/s)

Lines come from a background thread, so a long silent stretch (a model loading, one long
episode decoding) still shows the job is alive.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

DEFAULT_EVERY_S = 5.0


class Bar:
    """What a job reports: items done, frames seen, a short note. Shown by the rich bar or by
    the periodic line writer; a disabled bar only counts."""

    def __init__(self, progress: Progress | None = None, task: int | None = None):
        self._progress, self._task = progress, task
        self.done = 0
        self.frames = 0
        self.text = ""
        self._t0 = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def note(self, text: str) -> None:
        """Replace the text after the bar (a trainer's loss and pairs/s)."""
        self.text = text
        if self._progress is not None:
            self._progress.update(self._task, rate=text)

    def add_frames(self, n: int) -> None:
        self.frames += n
        if self._progress is not None:
            rate = self.frames / max(time.monotonic() - self._t0, 1e-9)
            self._progress.update(self._task, rate=f"{self.frames} frames, {rate:.1f} frames/s")


def status_line(description: str, bar: Bar, total: int | None, unit: str, elapsed: float) -> str:
    """`ingest: 120/400 episodes, 3.1/s, eta 90 s, 5400 frames (41.2 frames/s)`."""
    count = f"{bar.done}/{total}" if total is not None else str(bar.done)
    parts = [f"{description}: {count}{' ' + unit if unit else ''}"]
    rate = bar.done / elapsed if elapsed > 0 else 0.0
    parts.append(f"{rate:.2f}/s" if 0 < rate < 1 else f"{rate:.1f}/s")  # 0.05/s, not 0.0/s, for slow items
    if total is not None and bar.done < total:
        parts.append(f"eta {(total - bar.done) / rate:.0f} s" if rate > 0 else "eta ?")
    elif total is not None:
        parts.append(f"done in {elapsed:.0f} s")
    if bar.frames:
        parts.append(f"{bar.frames} frames ({bar.frames / elapsed if elapsed > 0 else 0.0:.1f} frames/s)")
    if bar.text:
        parts.append(bar.text)
    return ", ".join(parts)


def _every_s(every_s: float | None) -> float:
    if every_s is not None:
        return every_s
    try:
        value = float(os.environ.get("LAWAM_PROGRESS_EVERY", DEFAULT_EVERY_S))
    except ValueError:
        return DEFAULT_EVERY_S
    return value if value > 0 else DEFAULT_EVERY_S


@contextmanager
def _lines(description: str, total: int | None, unit: str, every_s: float, stream: TextIO) -> Iterator[Bar]:
    bar = Bar()
    stop = threading.Event()

    def write() -> None:
        print(status_line(description, bar, total, unit, time.monotonic() - bar._t0), file=stream, flush=True)

    def loop() -> None:
        while not stop.wait(every_s):
            write()

    thread = threading.Thread(target=loop, name=f"progress-{description}", daemon=True)
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join()
        write()  # the end state, whatever the interval


@contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True, unit: str = "",
                 every_s: float | None = None) -> Iterator[Bar]:
    """A live bar when stderr is a terminal; else a plain status line every `every_s`
    seconds (default `$LAWAM_PROGRESS_EVERY` or 5) and one at the end; nothing when not
    `enabled`."""
    if not enabled:
        yield Bar()
        return
    console = Console(stderr=True)
    if not (console.is_terminal or console.is_jupyter):
        with _lines(description, total, unit, _every_s(every_s), sys.stderr) as bar:
            yield bar
        return
    columns = [TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               TimeElapsedColumn(), TextColumn("{task.fields[rate]}")]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, rate="")
        yield Bar(progress, task)
