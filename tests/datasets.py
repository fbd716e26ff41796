"""Factories that write tiny real datasets for the tests: videos, LeRobot v2.1 / v3.0, HDF5,
webdataset shards, and damaged RLDS records / hostile tars.

The LeRobot factories reproduce the files `lerobot` writes (checked against a dataset made
by lerobot 0.4.4, see tests/fixtures_lerobot/make_real_lerobot.py): same paths, same
info.json keys, same parquet columns and types (fixed-size float lists, float32
`timestamp`, tasks.parquet indexed by the task string, `stats/*` columns we must skip).

Actions encode where they came from: `action[:, 0] = 1000 * episode_index + row`, so a
test can tell an episode's own rows from its neighbours' in a shared file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.samples.lerobot_v3 import scheduling_kept

CAM = "observation.images.top"


def frames_pattern(n_frames: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(N, H, W, 3) uint8 frames, each a flat grey level that differs frame to frame."""
    w, h = size
    levels = (np.arange(n_frames) * 7 + seed * 31) % 200 + 20
    return np.broadcast_to(levels[:, None, None, None], (n_frames, h, w, 3)).astype(np.uint8)


def make_video(
    path: str | Path,
    n_frames: int = 10,
    fps: int = 10,
    size: tuple[int, int] = (32, 24),
    codec: str = "libx264",
    seed: int = 0,
) -> Path:
    """Write a tiny real video (size = (width, height)); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_frames(path, frames_pattern(n_frames, size, seed), fps, codec)
    return path


def write_frames(path: Path, frames: np.ndarray, fps: int, codec: str = "libx264") -> None:
    with scheduling_kept(), av.open(str(path), "w") as out:  # libsvtav1: see scheduling_kept
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "g": "2"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _features(size: tuple[int, int], video_fps: int, action_dim: int, state_dim: int) -> dict:
    w, h = size
    feat = {
        CAM: {
            "dtype": "video",
            "shape": [h, w, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": h,
                "video.width": w,
                "video.codec": "h264",
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": video_fps,
                "video.channels": 3,
                "has_audio": False,
            },
        },
        "observation.state": {"dtype": "float32", "shape": [state_dim], "names": None},
        "action": {"dtype": "float32", "shape": [action_dim], "names": None},
    }
    for k, dtype in (
        ("timestamp", "float32"),
        ("frame_index", "int64"),
        ("episode_index", "int64"),
        ("index", "int64"),
        ("task_index", "int64"),
    ):
        feat[k] = {"dtype": dtype, "shape": [1], "names": None}
    return feat


def _rows(
    ep: int,
    n_frames: int,
    rate: int,
    video_fps: int,
    first_index: int,
    task_index: int,
    action_dim: int,
    state_dim: int,
) -> pa.Table:
    """An episode's data rows at the control `rate` (rate/video_fps rows per video frame)."""
    m = n_frames * rate // video_fps
    act = np.zeros((m, action_dim), np.float32)
    act[:, 0] = 1000 * ep + np.arange(m)
    state = np.full((m, state_dim), ep, np.float32)
    fsl = lambda a: pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])  # noqa: E731
    return pa.table(
        {
            "observation.state": fsl(state),
            "action": fsl(act),
            "timestamp": pa.array(np.arange(m, dtype=np.float32) / np.float32(rate)),
            "frame_index": pa.array(np.arange(m, dtype=np.int64)),
            "episode_index": pa.array(np.full(m, ep, np.int64)),
            "index": pa.array(np.arange(first_index, first_index + m, dtype=np.int64)),
            "task_index": pa.array(np.full(m, task_index, np.int64)),
        }
    )


def _info(version: str, n_eps: int, total_rows: int, tasks: list[str], rate: int, features: dict) -> dict:
    info = {
        "codebase_version": version,
        "robot_type": None,
        "total_episodes": n_eps,
        "total_frames": total_rows,
        "total_tasks": len(set(tasks)),
        "chunks_size": 1000,
        "fps": rate,
        "splits": {"train": f"0:{n_eps}"},
        "features": features,
    }
    if version == "v3.0":
        info |= {
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        }
    else:
        info |= {
            "total_videos": n_eps,
            "total_chunks": 1,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        }
    return info


def make_lerobot_v21(
    root: str | Path,
    episodes: Sequence[int] = (6, 4, 5),
    fps: int = 10,
    video_fps: int | None = None,
    tasks: Sequence[str] | None = None,
    size: tuple[int, int] = (32, 24),
) -> Path:
    """LeRobot v2.1: one parquet + one mp4 per episode, meta/episodes.jsonl + tasks.jsonl.
    `episodes` are frame counts; `fps` is the row (control) rate, `video_fps` the video's."""
    root, video_fps = Path(root), video_fps or fps
    tasks = list(tasks or [f"task {i % 2}" for i in range(len(episodes))])
    task_ids = {t: i for i, t in enumerate(dict.fromkeys(tasks))}
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    total = 0
    with open(meta / "episodes.jsonl", "w") as ej:
        for ep, n in enumerate(episodes):
            table = _rows(ep, n, fps, video_fps, total, task_ids[tasks[ep]], 4, 3)
            data = root / f"data/chunk-000/episode_{ep:06d}.parquet"
            data.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, data)
            make_video(root / f"videos/chunk-000/{CAM}/episode_{ep:06d}.mp4", n, video_fps, size, seed=ep)
            ej.write(json.dumps({"episode_index": ep, "tasks": [tasks[ep]], "length": table.num_rows}) + "\n")
            total += table.num_rows
    with open(meta / "tasks.jsonl", "w") as tj:
        for t, i in task_ids.items():
            tj.write(json.dumps({"task_index": i, "task": t}) + "\n")
    info = _info("v2.1", len(episodes), total, tasks, fps, _features(size, video_fps, 4, 3))
    (meta / "info.json").write_text(json.dumps(info, indent=4))
    return root


def make_lerobot_v30(
    root: str | Path,
    episodes: Sequence[int] = (6, 4, 5),
    fps: int = 10,
    video_fps: int | None = None,
    tasks: Sequence[str] | None = None,
    size: tuple[int, int] = (32, 24),
    episodes_per_file: int | None = None,
) -> Path:
    """LeRobot v3.0: episodes packed into shared data parquet / mp4 files (all in one file
    by default, else `episodes_per_file` per file), located by from/to timestamps and
    dataset_from/to_index in meta/episodes/chunk-000/file-000.parquet."""
    root, video_fps = Path(root), video_fps or fps
    tasks = list(tasks or [f"task {i % 2}" for i in range(len(episodes))])
    task_ids = {t: i for i, t in enumerate(dict.fromkeys(tasks))}
    per_file = episodes_per_file or len(episodes)
    vid = f"videos/{CAM}/"
    meta_rows, total = [], 0
    for file_index, start in enumerate(range(0, len(episodes), per_file)):
        tables, frames, t = [], [], 0.0
        for ep in range(start, min(start + per_file, len(episodes))):
            n = episodes[ep]
            table = _rows(ep, n, fps, video_fps, total, task_ids[tasks[ep]], 4, 3)
            tables.append(table)
            frames.append(frames_pattern(n, size, seed=ep))
            act = table.column("action").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
            meta_rows.append(
                {
                    "episode_index": ep,
                    "tasks": [tasks[ep]],
                    "length": table.num_rows,
                    "data/chunk_index": 0,
                    "data/file_index": file_index,
                    "dataset_from_index": total,
                    "dataset_to_index": total + table.num_rows,
                    vid + "chunk_index": 0,
                    vid + "file_index": file_index,
                    vid + "from_timestamp": t,
                    vid + "to_timestamp": t + n / video_fps,
                    "stats/action/mean": act.mean(axis=0).tolist(),  # real files carry many stats/* columns
                    "meta/episodes/chunk_index": 0,
                    "meta/episodes/file_index": 0,
                }
            )
            t += n / video_fps
            total += table.num_rows
        data = root / f"data/chunk-000/file-{file_index:03d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(tables), data)
        video = root / f"{vid}chunk-000/file-{file_index:03d}.mp4"
        video.parent.mkdir(parents=True, exist_ok=True)
        write_frames(video, np.concatenate(frames), video_fps)
    meta = root / "meta"
    (meta / "episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(meta_rows), meta / "episodes/chunk-000/file-000.parquet")
    pd.DataFrame({"task_index": list(task_ids.values())}, index=list(task_ids)).to_parquet(meta / "tasks.parquet")
    info = _info("v3.0", len(episodes), total, tasks, fps, _features(size, video_fps, 4, 3))
    (meta / "info.json").write_text(json.dumps(info, indent=4))
    return root


def make_hdf5(
    path: str | Path,
    demos: Sequence[int] | dict[str, int] = (5, 3),
    size: tuple[int, int] = (16, 12),
    camera: str = "agentview_image",
    control_freq: float | None = 20.0,
    instruction: str | None = None,
) -> Path:
    """robomimic/LIBERO-style file: data/demo_N/{obs/<camera> (N,H,W,3) uint8, actions (N,7)}.
    `demos` are frame counts (named demo_0..) or {name: frames}. Frame i of a demo has grey
    level `frames_pattern` and `actions[i, 0] == 1000 * demo_number + i`. `control_freq`
    goes into robomimic's `env_args` attribute; `instruction` into LIBERO's `problem_info`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    named = demos if isinstance(demos, dict) else {f"demo_{i}": n for i, n in enumerate(demos)}
    w, h = size
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        if control_freq is not None:
            data.attrs["env_args"] = json.dumps({"env_name": "Lift", "env_kwargs": {"control_freq": control_freq}})
        if instruction is not None:
            data.attrs["problem_info"] = json.dumps({"language_instruction": instruction})
        for name, n in named.items():
            num = int(name.rsplit("_", 1)[1])
            g = data.create_group(name)
            g.create_dataset(f"obs/{camera}", data=frames_pattern(n, (w, h), seed=num))
            g.create_dataset("obs/robot0_eef_pos", data=np.full((n, 3), num, np.float64))
            acts = np.zeros((n, 7), np.float64)
            acts[:, 0] = 1000 * num + np.arange(n)
            g.create_dataset("actions", data=acts)
            g.attrs["num_samples"] = n
    return path


def make_webdataset(folder: str | Path, shards: Sequence[int] = (3, 2), *, n_frames: int = 10, fps: int = 10,
                    ext: str = "mp4", codec: str = "libx264", start: int = 0) -> Path:
    """Shards `{i:05d}.tar` as video2dataset writes them, with the `webdataset` library's own
    `TarWriter`: per sample `{key}.mp4` (or `ext`), `{key}.json` (video2dataset's fields plus a
    `caption`) and `{key}.txt`; beside each shard its `.parquet` and `_stats.json`. Keys are
    `{shard:05d}{sample:04d}`; sample k's frames are grey levels of `seed=k` (`frames_pattern`)."""
    import webdataset as wds

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clip = folder / f"_clip.{ext}"
    for s, n in enumerate(shards, start):
        keys = []
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as sink:
            for k in range(n):
                key = f"{s:05d}{k:04d}"
                write_frames(clip, frames_pattern(n_frames, (32, 24), seed=s * 10 + k), fps, codec)
                meta = {"url": f"https://example.com/{key}.{ext}", "key": key, "status": "success",
                        "caption": f"caption {key}", "clips": [{"caption": f"clip {key}"}]}
                sink.write({"__key__": key, ext: clip.read_bytes(), "json": json.dumps(meta).encode(),
                            "txt": f"text {key}".encode()})
                keys.append(key)
        pq.write_table(pa.table({"key": keys, "status": ["success"] * n}), folder / f"{s:05d}.parquet")
        (folder / f"{s:05d}_stats.json").write_text(json.dumps({"count": n, "successes": n, "failed_to_download": 0}))
    clip.unlink()
    return folder


def make_hostile_tar(path: Path, video: bytes) -> Path:
    """A tar whose members `ok.mp4`, `../evil.mp4`, `/abs/evil.mp4` and `sub/../../up.mp4` all
    hold `video`: a reader that extracted members would write outside its folder."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name in ("ok.mp4", "../evil.mp4", "/abs/evil.mp4", "sub/../../up.mp4"):
            info = tarfile.TarInfo(name)
            info.size = len(video)
            tar.addfile(info, io.BytesIO(video))
    return path


def tfrecord_records(path: Path) -> list:
    """The records of a TFRecord file (`pipeline.sources.tfrecord.Record`: index, offset, length, data)."""
    from pipeline.sources.tfrecord import iter_records

    with open(path, "rb") as f:
        return list(iter_records(f))


def rewrite_rlds_record(shard: Path, index: int, change) -> None:
    """Rewrite record `index` of an RLDS shard through `change(example)` with the `tfrecord`
    package's writer (valid framing and CRCs: only the content is bad)."""
    from tfrecord.writer import TFRecordWriter

    from pipeline.sources.tfrecord import Example

    records = tfrecord_records(shard)
    tmp = shard.with_suffix(".tmp")
    writer = TFRecordWriter(str(tmp))
    for rec in records:
        ex = Example()
        ex.ParseFromString(rec.data)
        if rec.index == index:
            change(ex)
        datum = {}
        for key, feat in ex.features.feature.items():
            kind = feat.WhichOneof("kind")
            datum[key] = (list(getattr(feat, kind).value), {"bytes_list": "byte", "float_list": "float",
                                                            "int64_list": "int"}[kind])
        writer.write(datum)
    writer.close()
    tmp.replace(shard)
