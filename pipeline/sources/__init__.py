"""Source adapters: turn a `SourceSpec` into `EpisodeRef`s, and load an episode's actions.

The public surface is four functions, dispatching on the format:

- `iter_episodes(spec)`: enumerate a source's episodes without decoding any video
  (reads listings, LeRobot `meta/`, HDF5 keys, and content hashes of the files).
- `load_actions(ref)`: the episode's robot actions on the frames' clock; None for
  human episodes and for sources without actions (video_dir, webdataset).
- `read_image_timestamps(ref)` / `iter_image_frames(ref, indices, block_frames)`: timestamps
  and pixels of episodes whose images are not a video (`ref.image_key` set: HDF5 arrays, RLDS
  per-step JPEG/PNG), for the decoder to use instead of a video container; only the frames
  asked for are read (HDF5) or decoded (RLDS). `read_image_frames(ref, indices)` reads HDF5
  arrays in one go.

Formats: `video_dir`, `lerobot`, `hdf5`, `rlds` (TFDS-built TFRecord shards, read without
TensorFlow), `webdataset` (tar shards, videos decoded from the tar). The shard formats
remember where each episode lies in its shard (`pipeline.sources.shards`).

Whole-source problems raise `SourceError` (a `ConfigError`) with the path and the fix;
per-episode problems surface when the episode is decoded or its actions are loaded, as
`EpisodeError` (a `BadInputError`: the episode is quarantined). See `pipeline.sources.base`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from pipeline.sources.base import ActionTrack, EpisodeError, EpisodeRef, SourceError
from pipeline.sources.hdf5 import iter_hdf5, load_hdf5_actions
from pipeline.sources.hdf5 import read_image_frames as _hdf5_frames
from pipeline.sources.hdf5 import read_image_timestamps as _hdf5_timestamps
from pipeline.sources.lerobot import iter_lerobot, load_lerobot_actions
from pipeline.sources.rlds import iter_rlds, iter_rlds_frames, load_rlds_actions, read_rlds_timestamps
from pipeline.sources.video_dir import iter_video_dir
from pipeline.sources.webdataset import iter_webdataset
from schemas.config import SourceSpec

__all__ = [
    "ActionTrack",
    "EpisodeError",
    "EpisodeRef",
    "SourceError",
    "check_source",
    "iter_episodes",
    "iter_image_frames",
    "load_actions",
    "read_image_frames",
    "read_image_timestamps",
]

_ENUMERATORS = {"video_dir": iter_video_dir, "lerobot": iter_lerobot, "hdf5": iter_hdf5, "rlds": iter_rlds,
                "webdataset": iter_webdataset}
_ACTION_LOADERS = {"lerobot": load_lerobot_actions, "hdf5": load_hdf5_actions, "rlds": load_rlds_actions}


def iter_episodes(spec: SourceSpec) -> Iterator[EpisodeRef]:
    """Every episode of the source, in a stable order, without decoding video.

    With several `cameras`, each camera of an episode is its own frame stream, keyed
    `<episode_id>@<camera>` (a view is what the encoder sees; actions are shared)."""
    try:
        enumerate_ = _ENUMERATORS[spec.format]
    except KeyError:
        raise SourceError(f"source {spec.id!r}: unknown format {spec.format!r}; use {sorted(_ENUMERATORS)}") from None
    if len(spec.cameras) <= 1 or spec.format in ("video_dir", "webdataset"):
        return enumerate_(spec)
    return (replace(ref, episode_id=f"{ref.episode_id}@{cam}")
            for cam in spec.cameras for ref in enumerate_(spec.model_copy(update={"cameras": [cam]})))


def check_source(spec: SourceSpec) -> None:
    """Raise SourceError now if the source cannot be read at all (missing folder, bad
    LeRobot info.json, no HDF5 files): enumerates only as far as its first episode."""
    next(iter(iter_episodes(spec)), None)


def load_actions(ref: EpisodeRef) -> ActionTrack | None:
    """Robot actions (and state) of the episode on the frames' clock; None when there are none."""
    if ref.kind != "robot" or ref.actions_uri is None or ref.actions_selector is None:
        return None
    fmt = json.loads(ref.actions_selector).get("format")
    try:
        loader = _ACTION_LOADERS[fmt]
    except KeyError:
        raise EpisodeError(f"{ref.key}: unknown actions selector format {fmt!r}") from None
    return loader(ref)


def _images_of(ref: EpisodeRef) -> str:
    if ref.image_key is None:
        raise EpisodeError(f"{ref.key}: {ref.uri} is a video file; decode it with pipeline.decode")
    return "rlds" if ref.format == "rlds" else "hdf5"


def read_image_frames(ref: EpisodeRef, indices: np.ndarray | list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 (K, H, W, 3), timestamps float64 (K,)) of an array-stored episode;
    all frames, or only `indices` (read sparsely)."""
    if _images_of(ref) == "rlds":
        stamps = read_rlds_timestamps(ref)
        idx = np.arange(len(stamps)) if indices is None else np.asarray(indices, dtype=np.int64)
        frames = [f for block, _ in iter_rlds_frames(ref, idx, max(1, len(idx))) for f in block]
        return (np.stack(frames) if frames else np.empty((0, 0, 0, 3), np.uint8)), stamps[idx]
    return _hdf5_frames(ref, indices)


def read_image_timestamps(ref: EpisodeRef) -> np.ndarray:
    """(N,) float64 seconds of every stored image of an array-stored episode; no pixels read,
    so a decoder can pick frames by timestamp and then read only those."""
    if _images_of(ref) == "rlds":
        return read_rlds_timestamps(ref)
    return _hdf5_timestamps(ref)


def iter_image_frames(ref: EpisodeRef, indices: np.ndarray, block_frames: int
                      ) -> Iterator[tuple[np.ndarray | list[np.ndarray], np.ndarray]]:
    """The images `indices` of an array-stored episode, `block_frames` at a time, with their
    timestamps: (n, H, W, 3) uint8 arrays (HDF5), or lists of (H, W, 3) uint8 arrays whose
    sizes may differ (RLDS images, decoded one by one; the episode's record read once)."""
    if _images_of(ref) == "rlds":
        yield from iter_rlds_frames(ref, indices, block_frames)
        return
    for i in range(0, len(indices), block_frames):
        yield _hdf5_frames(ref, indices[i : i + block_frames])
