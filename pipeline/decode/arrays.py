"""Frames that arrive as arrays, not in a video (HDF5 robomimic / LIBERO images, RLDS steps'
JPEG/PNG images once decoded, live simulator frames): resized through the very pixel path a
decoded video frame takes, so one encoder identity means one preprocessing whatever the source
format (DESIGN.md, "Decode").

The path is `pipeline.decode.pyav.resize_like_decode`: rgb24 -> yuv420p -> one swscale call with
``AREA`` interpolation to the scaled size -> centre crop, exactly what `decode_pyav` does to a
frame of an ingested video (its chroma subsampling included). Closed-loop evaluation feeds live
frames through the same function.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.decode.base import RESIZE_MODES
from pipeline.decode.pyav import resize_like_decode

__all__ = ["RESIZE_MODES", "resize_frames"]


def resize_frames(frames: np.ndarray | Sequence[np.ndarray], size: int, mode: str = "center_crop") -> np.ndarray:
    """(n, H, W, 3) uint8 RGB -> (n, size, size, 3) uint8, resized and cropped like a video frame
    (`mode`: "center_crop" keeps the aspect ratio, "squash" does not). A list of (H, W, 3) frames
    of different sizes (RLDS images, decoded one by one) is taken as it is."""
    if not isinstance(frames, np.ndarray | list | tuple):
        frames = np.asarray(frames)
    return resize_like_decode(frames, size, mode)
