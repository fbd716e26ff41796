"""One episode's frames at the corpus rate, in blocks, whatever the episode is made of.

Videos go through `pipeline.decode` (PyAV, or decord with PyAV as fallback); HDF5 episodes
(robomimic / LIBERO) already hold uint8 image arrays at the control rate, so they are
picked by timestamp here and resized by `pipeline.decode.arrays` (the swscale path a video's
frames take). This is the body of the Ray decode task.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from pipeline.decode import decode_frames, pick_frame_indices
from pipeline.decode.arrays import resize_frames
from pipeline.sources import read_image_frames, read_image_timestamps
from pipeline.sources.base import EpisodeError
from schemas.records import EpisodeRef


def decode_episode_blocks(ref: EpisodeRef, *, fps: float, size: int, resize: str = "center_crop",
                          max_seconds: float | None = None, block_frames: int = 32,
                          decoder: str = "auto") -> Iterator[dict]:
    """Yield {"frames": (n, size, size, 3) uint8, "timestamps": (n,) float64} blocks.
    A refused episode (bad input found at enumeration) is never opened: EpisodeError."""
    if ref.refused is not None:
        raise EpisodeError(ref.refused)
    if ref.image_key is None:
        for block in decode_frames(ref.uri, fps=fps, size=size, start_s=ref.start_s, end_s=ref.end_s,
                                   resize=resize, max_seconds=max_seconds, block_frames=block_frames,
                                   backend=decoder):
            yield {"frames": block.frames, "timestamps": block.timestamps}
        return
    stamps = read_image_timestamps(ref)  # shape only: frames are read block by block below
    if not len(stamps):
        return
    end = math.inf if max_seconds is None else float(stamps[0]) + max_seconds
    keep = pick_frame_indices(stamps, fps=fps, start_s=float(stamps[0]), end_s=end)  # same rule as for videos
    for i in range(0, len(keep), block_frames):
        frames, ts = read_image_frames(ref, keep[i : i + block_frames])
        yield {"frames": resize_frames(frames, size, resize), "timestamps": ts.astype(np.float64)}
