"""Small sample corpora for tests, demos and benchmarks, rendered from Meta-World.

`make_samples(out_dir)` writes two sources a newcomer can point the pipeline at:

    out_dir/robot/   a LeRobot codebase v3.0 dataset of scripted-expert episodes
                     (one row per video frame at 20 Hz; see `metaworld_robot`), with
                     meta/lawam_samples.json recording each episode's goal layout
    out_dir/human/   an action-free video folder with manifest.csv (see `human`)
    out_dir/human_truth.parquet  what the hand did in each human clip, kept beside the
                     source for evaluation only (`read_human_truth`)
    out_dir/.samples.json  the arguments and format version the corpora were made with

A second call with the same arguments renders nothing and returns the summary of what
is on disk. Other arguments regenerate both corpora in a hidden sibling folder that is
renamed into place at the end, so an interrupted run never leaves a half corpus that
looks complete. A lock file next to `out_dir` makes concurrent calls (pytest-xdist
workers sharing a fixture) wait for each other instead of racing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import av
import pandas as pd
from rich.table import Table

from pipeline.progress import progress_bar
from pipeline.samples import human
from pipeline.samples.human import HumanTruth, read_human_truth
from pipeline.samples.lerobot_v3 import DATA_PATH, EPISODES_PATH, INFO_PATH, TASKS_PATH, VIDEO_PATH
from pipeline.samples.tasks import (
    DEFAULT_HUMAN_TASKS,
    DEFAULT_TASKS,
    TASK_INSTRUCTIONS,
    SampleError,
    check_cameras,
    check_count,
    check_image_size,
    check_tasks,
)
from schemas import SourceSpec

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3  # bump when the on-disk layout or the rendering changes: caches regenerate
CACHE_FILE = ".samples.json"
# Inside the robot dataset: generator arguments and each episode's layout (see metaworld_robot).
LAYOUTS_FILE = "meta/lawam_samples.json"

__all__ = [
    "sample_sources",
    "DEFAULT_HUMAN_TASKS",
    "DEFAULT_TASKS",
    "HumanTruth",
    "TASK_INSTRUCTIONS",
    "SampleError",
    "SamplesSummary",
    "SourceSummary",
    "make_samples",
    "read_human_truth",
    "summarize_samples",
]


@dataclass(frozen=True)
class SourceSummary:
    """What one generated source holds, read from its files."""

    source: str  # "robot" | "human"
    format: str  # the source format to ingest it with: "lerobot" (v3.0) | "video_dir"
    path: Path
    episodes: int
    frames: int  # video frames (per camera for the robot corpus)
    hours: float  # video duration
    tasks: tuple[str, ...]  # instructions, in first-appearance order


@dataclass(frozen=True)
class SamplesSummary:
    """The sources under `out_dir`; `cached` says whether this call reused them unrendered."""

    out_dir: Path
    sources: tuple[SourceSummary, ...]
    cached: bool = False

    COLUMNS: ClassVar[tuple[str, ...]] = ("source", "format", "episodes", "frames", "hours", "tasks", "path")

    def to_rows(self) -> list[dict[str, str]]:
        """One dict of display strings per source, keyed by `COLUMNS`."""
        return [
            {
                "source": s.source,
                "format": s.format,
                "episodes": str(s.episodes),
                "frames": str(s.frames),
                "hours": f"{s.hours:.4f}",
                "tasks": "; ".join(s.tasks),
                "path": str(s.path),
            }
            for s in self.sources
        ]

    def to_table(self) -> Table:
        """A rich table of `to_rows()`, titled with the folder and whether it was cached."""
        state = "cached" if self.cached else "generated"
        table = Table(title=f"sample corpora in {self.out_dir} ({state})")
        for column in self.COLUMNS:
            table.add_column(column, justify="right" if column in ("episodes", "frames", "hours") else "left")
        for row in self.to_rows():
            table.add_row(*(row[column] for column in self.COLUMNS))
        return table


def make_samples(
    out_dir: Path,
    *,
    tasks: Sequence[str] = DEFAULT_TASKS,
    episodes_per_task: int = 2,
    human_tasks: Sequence[str] = DEFAULT_HUMAN_TASKS,
    human_episodes_per_task: int = 2,
    seed: int = 0,
    image_size: int = 128,
    cameras: Sequence[str] = ("corner",),
    min_seconds: float = 0.0,
    progress: bool = True,
) -> SamplesSummary:
    """Render (or reuse) the robot and human sample corpora under `out_dir`.

    `min_seconds` > 0 slows each episode's expert (`metaworld_robot.SPEEDS`) until its clip
    lasts that long, where a slower expert still succeeds: at full speed the default tasks
    take 0.5-1.5 s, too short for pairs a second apart.

    Renders in this process: a caller may ingest or train in it afterwards (`lawam demo`, a
    notebook), since `metaworld_env` loads triton's LLVM before Mesa's (the other order
    segfaults) and the video writer keeps the process's scheduling.

    An empty `tasks` or `human_tasks` leaves that corpus out. Raises `SampleError` for a
    bad argument before anything is rendered, and when `out_dir` holds files that
    `make_samples` did not write (it never deletes those).
    """
    out_dir = Path(out_dir)
    args = _checked_args(tasks, episodes_per_task, human_tasks, human_episodes_per_task, seed, image_size,
                         cameras, min_seconds)
    with _locked(out_dir):
        if _cache_matches(out_dir, args):
            logger.info("sample corpora in %s are up to date; nothing rendered", out_dir)
            return _summarize(out_dir, cached=True)
        if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / CACHE_FILE).exists():
            raise SampleError(f"{out_dir} holds files make_samples did not write; choose an empty or new folder")
        started = time.perf_counter()
        # Under the lock no other call works on out_dir: leftovers are from killed runs.
        for stale in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
        partial.mkdir(parents=True)
        try:
            _render_corpora(partial, args, progress)
            (partial / CACHE_FILE).write_text(json.dumps(args, indent=2))
            _swap_into_place(partial, out_dir)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        logger.info("rendered sample corpora into %s in %.1f s", out_dir, time.perf_counter() - started)
        return _summarize(out_dir, cached=False)


def summarize_samples(out_dir: Path) -> SamplesSummary:
    """Summarize the corpora already under `out_dir` from their files; renders nothing."""
    return _summarize(Path(out_dir), cached=True)


def _checked_args(tasks: Sequence[str], episodes_per_task: int, human_tasks: Sequence[str],
                  human_episodes_per_task: int, seed: int, image_size: int,
                  cameras: Sequence[str], min_seconds: float) -> dict[str, Any]:
    """The validated arguments as the JSON document stored in `.samples.json`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SampleError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(min_seconds, bool) or not isinstance(min_seconds, int | float) or not 0 <= min_seconds <= 6:
        raise SampleError(f"min_seconds must be a number of seconds in 0..6 (Meta-World truncates at 6.25 s), "
                          f"got {min_seconds!r}")
    args = {
        "format_version": FORMAT_VERSION,
        "tasks": list(check_tasks(tasks, "tasks")),
        "episodes_per_task": check_count(episodes_per_task, "episodes_per_task"),
        "human_tasks": list(check_tasks(human_tasks, "human_tasks")),
        "human_episodes_per_task": check_count(human_episodes_per_task, "human_episodes_per_task"),
        "seed": seed,
        "image_size": check_image_size(image_size),
        "cameras": list(check_cameras(cameras, "cameras")),
        "min_seconds": float(min_seconds),
        # Another MuJoCo or Meta-World may render or simulate differently: regenerate then.
        "versions": {name: metadata.version(name) for name in ("metaworld", "mujoco", "av")},
    }
    if not args["tasks"] and not args["human_tasks"]:
        raise SampleError("tasks and human_tasks are both empty; nothing to make")
    return args


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cache_matches(out_dir: Path, args: dict[str, Any]) -> bool:
    try:
        stored = json.loads((out_dir / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return stored == args and all(path.exists() for path in _expected_files(out_dir, args))


def _expected_files(out_dir: Path, args: dict[str, Any]) -> list[Path]:
    files = []
    if args["tasks"]:
        robot = out_dir / "robot"
        files += [robot / INFO_PATH, robot / TASKS_PATH, robot / DATA_PATH.format(chunk_index=0, file_index=0),
                  robot / EPISODES_PATH.format(chunk_index=0, file_index=0), robot / LAYOUTS_FILE]
        files += [robot / VIDEO_PATH.format(video_key=f"observation.images.{camera}", chunk_index=0, file_index=0)
                  for camera in args["cameras"]]
    if args["human_tasks"]:
        manifest = out_dir / "human" / human.MANIFEST
        files += [manifest, out_dir / human.TRUTH_FILE]
        if manifest.exists():
            files += [out_dir / "human" / name for name in pd.read_csv(manifest)["file"]]
    return files


def _render_corpora(root: Path, args: dict[str, Any], show_progress: bool) -> None:
    # Imported here so that reading corpora (and `lerobot_v3`) works without the `sim` extra.
    from pipeline.samples import metaworld_robot

    if args["tasks"]:
        with progress_bar("robot episodes", len(args["tasks"]) * args["episodes_per_task"],
                          enabled=show_progress) as bar:
            metaworld_robot.make_robot_corpus(
                root / "robot", tasks=args["tasks"], episodes_per_task=args["episodes_per_task"],
                seed=args["seed"], image_size=args["image_size"], cameras=args["cameras"],
                min_seconds=args["min_seconds"],
                record={"format_version": args["format_version"], "versions": args["versions"]},
                on_episode=lambda _: bar.advance())
    if args["human_tasks"]:
        with progress_bar("human clips", len(args["human_tasks"]) * args["human_episodes_per_task"],
                          enabled=show_progress) as bar:
            human.make_human_corpus(
                root / "human", tasks=args["human_tasks"], episodes_per_task=args["human_episodes_per_task"],
                seed=args["seed"], image_size=args["image_size"], min_seconds=args["min_seconds"],
                on_episode=lambda _: bar.advance())


def _swap_into_place(partial: Path, out_dir: Path) -> None:
    """Replace `out_dir` by `partial` with renames only: no moment shows a mix of the two."""
    if not out_dir.exists():
        os.replace(partial, out_dir)
        return
    retired = out_dir.parent / f".{out_dir.name}.retired-{os.getpid()}"
    shutil.rmtree(retired, ignore_errors=True)
    os.replace(out_dir, retired)
    os.replace(partial, out_dir)
    shutil.rmtree(retired, ignore_errors=True)


def _summarize(out_dir: Path, *, cached: bool) -> SamplesSummary:
    sources = []
    if (out_dir / "robot" / INFO_PATH).exists():
        sources.append(_summarize_robot(out_dir / "robot"))
    if (out_dir / "human" / human.MANIFEST).exists():
        sources.append(_summarize_human(out_dir / "human"))
    if not sources:
        raise SampleError(f"{out_dir} holds no sample corpora; make them with `lawam samples` or make_samples()")
    return SamplesSummary(out_dir=out_dir, sources=tuple(sources), cached=cached)


def _summarize_robot(root: Path) -> SourceSummary:
    info = json.loads((root / INFO_PATH).read_text())
    episodes = pd.read_parquet(root / EPISODES_PATH.format(chunk_index=0, file_index=0))
    video_keys = [key for key, feature in info["features"].items() if feature["dtype"] == "video"]
    if video_keys:
        key = video_keys[0]
        seconds = float((episodes[f"videos/{key}/to_timestamp"] - episodes[f"videos/{key}/from_timestamp"]).sum())
        frames = round(seconds * info["features"][key]["info"]["video.fps"])
    else:
        seconds, frames = info["total_frames"] / info["fps"], info["total_frames"]
    tasks = pd.read_parquet(root / TASKS_PATH)
    return SourceSummary("robot", "lerobot", root, int(info["total_episodes"]), frames, seconds / 3600,
                         tuple(str(task) for task in tasks.index))


def _summarize_human(root: Path) -> SourceSummary:
    manifest = pd.read_csv(root / human.MANIFEST)
    frames, seconds = 0, 0.0
    for name in manifest["file"]:
        with av.open(str(root / name)) as container:
            stream = container.streams.video[0]
            frames += stream.frames
            seconds += stream.frames / float(stream.average_rate)
    return SourceSummary("human", "video_dir", root, len(manifest), frames, seconds / 3600,
                         tuple(dict.fromkeys(manifest["instruction"])))


def sample_sources(out_dir: Path) -> list[SourceSpec]:
    """Source specs of the corpora `make_samples(out_dir)` writes — the same as
    configs/sources/*.yaml, for the demo and the tests."""
    out_dir = Path(out_dir).resolve()
    return [
        SourceSpec(id="metaworld", kind="robot", format="lerobot", uri=str(out_dir / "robot"),
                   action_fields=["action"], state_fields=["observation.state"], fps=10,
                   notes="Meta-World scripted experts"),
        SourceSpec(id="human-standin", kind="human", format="video_dir", uri=str(out_dir / "human"),
                   manifest="manifest.csv", instruction_field="instruction"),
    ]
