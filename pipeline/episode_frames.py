"""One episode's frames at the corpus rate, in blocks, whatever the episode is made of.

Videos go through `pipeline.decode` (PyAV, or decord with PyAV as fallback); HDF5 episodes
(robomimic / LIBERO) already hold uint8 image arrays at the control rate, so they are
picked by timestamp and resized here. This is the body of the Ray decode task.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.decode import decode_frames, pick_frame_indices
from pipeline.sources import read_image_frames, read_image_timestamps
from pipeline.sources.base import EpisodeRef, SourceError


def resize_frames(frames: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, size, size, 3) uint8; center_crop keeps the aspect ratio."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    if mode == "center_crop" and h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[..., top : top + side, left : left + side]
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def decode_episode_blocks(ref: EpisodeRef, *, fps: float, size: int, resize: str = "center_crop",
                          max_seconds: float | None = None, block_frames: int = 32,
                          decoder: str = "auto") -> Iterator[dict]:
    """Yield {"frames": (n, size, size, 3) uint8, "timestamps": (n,) float64} blocks.
    A refused episode (bad input found at enumeration) is never opened: SourceError."""
    if ref.refused is not None:
        raise SourceError(ref.refused)
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
