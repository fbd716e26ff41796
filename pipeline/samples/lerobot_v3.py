"""Write in-memory episodes as a LeRobot dataset, codebase v3.0, the way `lerobot` lays it out.

The layout follows `lerobot.datasets` (CODEBASE_VERSION "v3.0", `utils.py`,
`lerobot_dataset.py`, `video_utils.py`) so a LeRobot reader can be tested against
small datasets made here without `lerobot` installed:

    meta/info.json                          codebase_version, fps, features, path templates, totals
    meta/stats.json                         per feature: min / max / mean / std / count / q01..q99,
                                            aggregated over the episodes (see `lerobot_stats`)
    meta/tasks.parquet                      task string as the index, column task_index
    meta/episodes/chunk-000/file-000.parquet one row per episode: tasks, length, data and video
                                            locations, dataset_from/to_index, stats/<feature>/<stat>
    data/chunk-000/file-000.parquet         one row per time step, every episode concatenated
    videos/<video_key>/chunk-000/file-000.mp4 every episode concatenated; an episode is the span
                                            [from_timestamp, to_timestamp) of its row in meta/episodes

Videos use lerobot's default encoding (AV1 via libsvtav1, yuv420p, g=2, crf=30) and
`features[<video_key>]["info"]` holds what lerobot's `get_video_info` reads back from
the file. Our Meta-World corpus has one row per frame, as lerobot requires of the
datasets it loads. The writer can also make datasets whose rows run at a control rate
above the video rate (`video_fps`; `info["fps"]` is then the row rate and each video
feature's `info["video.fps"]` its own): lerobot's loader rejects those, our ingest
aligns them by timestamp, and the tests use them to keep that path honest.
Everything goes into one data file and one video file per key (lerobot would start a
new file past 100 MB of data / 500 MB of video), which is plenty for test datasets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.samples.lerobot_stats import Stats, aggregate_stats, feature_stats, image_stats, to_lists
from schemas.errors import ConfigError

logger = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNK_SIZE = 1000  # max files per chunk folder (lerobot default)
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 500
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
# Columns lerobot adds to every dataset, after the user's features.
DEFAULT_FEATURE_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


class LeRobotWriteError(ConfigError):
    """The episodes handed to `write_lerobot_v3` cannot form one dataset (the message says which)."""


@dataclass
class LeRobotEpisode:
    """One episode in memory: per-row arrays, per-camera frames, its task."""

    task: str  # natural-language instruction; becomes a row of meta/tasks.parquet
    data: dict[str, np.ndarray]  # feature -> (N,) or (N, D) array, one row per time step
    videos: dict[str, np.ndarray] = field(default_factory=dict)  # video key -> (F, H, W, 3) uint8
    metadata: dict[str, Any] = field(default_factory=dict)  # extra meta/episodes columns (scalars)

    @property
    def length(self) -> int:
        """Rows in the episode (lerobot's episode `length`)."""
        return len(next(iter(self.data.values())))


@dataclass(frozen=True)
class VideoEncoding:
    """Encoder settings; the defaults are lerobot's `encode_video_frames` defaults."""

    vcodec: str = "libsvtav1"  # lerobot also accepts "h264" / "hevc"
    pix_fmt: str = "yuv420p"
    g: int | None = 2  # keyframe every 2 frames: any frame is cheap to seek to
    crf: int | None = 30


def encode_video_frames(
    path: Path, frames: Iterable[np.ndarray], fps: int, encoding: VideoEncoding = VideoEncoding()
) -> None:
    """Encode RGB uint8 frames (H, W, 3) into `path` at a constant `fps` (frame i at i / fps s)."""
    # SVT-AV1 prints a banner per encoder to stderr unless told otherwise; warnings still show.
    os.environ.setdefault("SVT_LOG", "1")
    options = {}
    if encoding.g is not None:
        options["g"] = str(encoding.g)
    if encoding.crf is not None:
        options["crf"] = str(encoding.crf)
    path.parent.mkdir(parents=True, exist_ok=True)
    with scheduling_kept(), av.open(str(path), "w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(encoding.vcodec, rate=fps, options=options)
                stream.pix_fmt = encoding.pix_fmt
                stream.height, stream.width = frame.shape[:2]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        if stream is None:
            raise LeRobotWriteError(f"no frames to encode into {path}")
        container.mux(stream.encode())


@contextlib.contextmanager
def scheduling_kept() -> Iterator[None]:
    """Keep the calling thread's scheduling policy through a video encode. SVT-AV1 (libsvtav1)
    raises the thread that runs an encoder to SCHED_FIFO at top priority where it may (as
    root: CI, containers), and leaves it there: every process started from that thread after
    (Ray, a trainer, subprocesses) inherited real-time priority and starved the machine (a
    test worker that rendered the sample corpora ran the rest of its tests at SCHED_FIFO 99)."""
    if not hasattr(os, "sched_getscheduler"):  # not Linux
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) != (policy, param.sched_priority):
            os.sched_setscheduler(0, policy, param)


def get_video_info(path: Path) -> dict[str, Any]:
    """What lerobot's `get_video_info` records for a video feature, read back from the file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info: dict[str, Any] = {
            "video.height": stream.height,
            "video.width": stream.width,
            "video.codec": stream.codec.canonical_name,
            "video.pix_fmt": stream.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(stream.base_rate),
            "video.channels": 3,
        }
        info["has_audio"] = len(container.streams.audio) > 0
    return info


def write_lerobot_v3(
    root: Path,
    episodes: Sequence[LeRobotEpisode],
    *,
    fps: int,
    video_fps: int | None = None,
    robot_type: str | None = None,
    names: Mapping[str, list[str]] | None = None,
    encoding: VideoEncoding = VideoEncoding(),
) -> dict[str, Any]:
    """Write `episodes` as a new LeRobot v3.0 dataset at `root` and return its info.json.

    `fps` is the row rate: row i of an episode gets `timestamp = i / fps`. Frames of a
    video are at `video_fps` (default `fps`, as in lerobot where rows == frames). `names`
    gives the per-dimension names of vector features (info.json `names`). `root` must
    not exist or be empty, as with `LeRobotDataset.create`.
    """
    video_fps = fps if video_fps is None else video_fps
    _check_episodes(root, episodes)
    root.mkdir(parents=True, exist_ok=True)
    tasks = list(dict.fromkeys(ep.task for ep in episodes))  # first-appearance order
    task_index = {task: i for i, task in enumerate(tasks)}

    data = _data_table(episodes, fps, task_index)
    data_file = root / DATA_PATH.format(chunk_index=0, file_index=0)
    data_file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(data, data_file, compression="snappy")

    video_keys = list(episodes[0].videos)
    for key in video_keys:
        frames = (frame for ep in episodes for frame in ep.videos[key])
        encode_video_frames(root / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0), frames,
                            video_fps, encoding)

    tasks_file = root / TASKS_PATH
    tasks_file.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"task_index": range(len(tasks))}, index=tasks).to_parquet(tasks_file)

    features = _features(episodes[0], data, names or {})
    for key in video_keys:
        features[key]["info"] = get_video_info(root / VIDEO_PATH.format(video_key=key, chunk_index=0,
                                                                        file_index=0))
    starts = np.cumsum([0, *(ep.length for ep in episodes)])[:-1]  # first row of each episode
    episode_stats = [_episode_stats(ep, data.slice(int(start), ep.length), video_keys)
                     for ep, start in zip(episodes, starts, strict=True)]
    episode_rows = _episode_rows(episodes, video_keys, video_fps, episode_stats)
    episodes_file = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes_file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(episode_rows), episodes_file, compression="snappy")

    stats = aggregate_stats(episode_stats)  # as lerobot: meta/stats.json aggregates the episodes' stats
    _write_json(root / STATS_PATH, {key: to_lists(value) for key, value in stats.items()})

    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(episodes),
        "total_frames": data.num_rows,
        "total_tasks": len(tasks),
        "chunks_size": DEFAULT_CHUNK_SIZE,
        "data_files_size_in_mb": DEFAULT_DATA_FILE_SIZE_IN_MB,
        "video_files_size_in_mb": DEFAULT_VIDEO_FILE_SIZE_IN_MB,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if video_keys else None,
        "features": features,
    }
    _write_json(root / INFO_PATH, info)
    logger.info("wrote LeRobot v3.0 dataset %s: %d episodes, %d rows", root, len(episodes), data.num_rows)
    return info


def _check_episodes(root: Path, episodes: Sequence[LeRobotEpisode]) -> None:
    if root.exists() and any(root.iterdir()):
        raise LeRobotWriteError(f"{root} already holds files; write a LeRobot dataset into a new folder")
    if not episodes:
        raise LeRobotWriteError("no episodes to write")
    first = episodes[0]
    for i, ep in enumerate(episodes):
        if set(ep.data) != set(first.data) or set(ep.videos) != set(first.videos):
            raise LeRobotWriteError(f"episode {i} has features {sorted(ep.data) + sorted(ep.videos)}, "
                                    f"episode 0 has {sorted(first.data) + sorted(first.videos)}")
        clash = set(ep.data) & set(DEFAULT_FEATURE_KEYS)
        if clash:
            raise LeRobotWriteError(f"episode {i} sets {sorted(clash)}: the writer fills those columns")
        lengths = {key: len(value) for key, value in ep.data.items()}
        if len(set(lengths.values())) != 1 or ep.length == 0:
            raise LeRobotWriteError(f"episode {i}: per-row features differ in length or are empty: {lengths}")
        for key, frames in ep.videos.items():
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
                raise LeRobotWriteError(f"episode {i}: video {key!r} must be non-empty (F, H, W, 3) uint8, "
                                        f"got {frames.dtype} {frames.shape}")
            if frames.shape[1:] != first.videos[key].shape[1:]:
                raise LeRobotWriteError(f"episode {i}: video {key!r} frames are {frames.shape[1:]}, "
                                        f"episode 0 has {first.videos[key].shape[1:]}")


def _arrow_array(values: np.ndarray) -> pa.Array:
    """(N,) -> a scalar column; (N, D) -> fixed_size_list<D>, as HF `datasets` stores Sequence(length=D)."""
    if values.ndim == 1:
        return pa.array(values)
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def _data_table(episodes: Sequence[LeRobotEpisode], fps: int, task_index: dict[str, int]) -> pa.Table:
    keys = list(episodes[0].data)
    columns: dict[str, np.ndarray] = {key: np.concatenate([ep.data[key] for ep in episodes]) for key in keys}
    frame_index = np.concatenate([np.arange(ep.length, dtype=np.int64) for ep in episodes])
    columns["timestamp"] = (frame_index / fps).astype(np.float32)
    columns["frame_index"] = frame_index
    columns["episode_index"] = np.concatenate(
        [np.full(ep.length, i, dtype=np.int64) for i, ep in enumerate(episodes)])
    columns["index"] = np.arange(len(frame_index), dtype=np.int64)
    columns["task_index"] = np.concatenate(
        [np.full(ep.length, task_index[ep.task], dtype=np.int64) for ep in episodes])
    return pa.table({key: _arrow_array(value) for key, value in columns.items()})


def _column_values(table: pa.Table, key: str) -> np.ndarray:
    """A data column back as (N, D) numpy (D = 1 for scalar columns)."""
    column = table.column(key).combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
    return column.to_numpy(zero_copy_only=False).reshape(-1, 1)


def _features(first: LeRobotEpisode, data: pa.Table, names: Mapping[str, list[str]]) -> dict[str, dict]:
    features: dict[str, dict] = {}
    for key in data.column_names:
        values = _column_values(data, key)
        feature_names = names.get(key)
        if feature_names is None and key not in DEFAULT_FEATURE_KEYS and values.shape[1] > 1:
            feature_names = [f"{key}_{i}" for i in range(values.shape[1])]
        features[key] = {"dtype": str(values.dtype), "shape": [values.shape[1]], "names": feature_names}
    for key, frames in first.videos.items():
        height, width, channels = frames.shape[1:]
        features[key] = {"dtype": "video", "shape": [height, width, channels],
                         "names": ["height", "width", "channels"]}
    # lerobot lists the user's features first and its default columns last.
    order = [k for k in features if k not in DEFAULT_FEATURE_KEYS] + list(DEFAULT_FEATURE_KEYS)
    return {key: features[key] for key in order}


def _episode_stats(episode: LeRobotEpisode, rows: pa.Table, video_keys: list[str]) -> dict[str, Stats]:
    """lerobot's per-episode stats: every data column (defaults included) and every video."""
    stats = {key: feature_stats(_column_values(rows, key)) for key in rows.column_names}
    stats |= {key: image_stats(episode.videos[key]) for key in video_keys}
    return stats


def _episode_rows(episodes: Sequence[LeRobotEpisode], video_keys: list[str], video_fps: int,
                  episode_stats: Sequence[dict[str, Stats]]) -> list[dict[str, Any]]:
    rows = []
    start = 0
    video_start = dict.fromkeys(video_keys, 0)  # frames before this episode in each video file
    for i, ep in enumerate(episodes):
        row: dict[str, Any] = {
            "episode_index": i,
            "tasks": [ep.task],
            "length": ep.length,
            "data/chunk_index": 0,
            "data/file_index": 0,
            "dataset_from_index": start,
            "dataset_to_index": start + ep.length,
        }
        for key in video_keys:
            end = video_start[key] + len(ep.videos[key])
            row[f"videos/{key}/chunk_index"] = 0
            row[f"videos/{key}/file_index"] = 0
            row[f"videos/{key}/from_timestamp"] = video_start[key] / video_fps  # float64, as lerobot
            row[f"videos/{key}/to_timestamp"] = end / video_fps
            video_start[key] = end
        for key, stats in episode_stats[i].items():
            row.update({f"stats/{key}/{stat}": value for stat, value in to_lists(stats).items()})
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        row.update(ep.metadata)
        rows.append(row)
        start += ep.length
    return rows


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=4, ensure_ascii=False))
