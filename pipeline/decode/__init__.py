"""Decode a video (or a [start_s, end_s) span of one) into fixed-size RGB frames at a target rate.

What this module promises, whatever the backend:

* **Frames are picked by presentation time.** Targets are ``t_j = start_s + j / fps`` for
  ``j = 0, 1, ...`` while ``t_j < end`` (``end = min(end_s, video end, start_s + max_seconds)``).
  Target ``t_j`` gets the source frame *being displayed* at ``t_j``: the last frame whose
  timestamp is ``<= t_j + tol`` (``tol`` absorbs container time-base rounding, see
  `timestamp_tolerance`). This is right for variable-frame-rate files, where index arithmetic
  (``frame = round(t * nominal_fps)``) silently picks the wrong pictures.
* **A span never leaks into its neighbours.** Only frames with ``start_s - tol <= pts < end - tol``
  are candidates, so an episode cut out of a LeRobot v3.0 file (many episodes per mp4, located by
  from/to timestamps) holds none of the previous or next episode's frames. A target that falls
  before the span's first frame (a stream that starts at pts > 0, a slightly late first frame)
  gets that first frame.
* **``fps`` is an upper bound.** When two targets would get the same source frame (target fps above
  the source's), the frame is kept once; ``FrameBlock.timestamps`` tells the true time of each.
* **Upright, square, uint8 RGB.** Rotation metadata (the display matrix) is applied; ``center_crop``
  scales the short side to ``size`` then crops the centre, ``squash`` resizes to ``size x size``.
* **Bounded memory.** `decode_frames` is a generator of blocks of at most ``block_frames`` frames;
  only the current block and the decoder's own buffers are alive, however long the video is.
* **Bad files raise `CorruptVideoError`** (a `BadInputError`, so a ``ValueError``) with one line naming the file and the
  problem. It can be raised after some blocks were yielded (a truncation is only seen at the end):
  callers must treat the whole episode as failed, which is what quarantine does.

Layout: `pipeline.decode.base` holds the shared types and the frame-timing rule,
`pipeline.decode.pyav` and `pipeline.decode.decord` one backend each, `pipeline.decode.arrays` the
resize of frames stored as arrays (HDF5); this module dispatches. No module imports a sibling
that imports it back.

Backends. ``backend="auto"`` decodes with PyAV (FFmpeg); ``backend="decord"`` tries decord first
and falls back to PyAV on any decord failure (codec it cannot open, such as AV1; rotation; its
own errors). PyAV is the default because on this project's 2-core CPU machine it measured faster
than decord at every target rate on the 640x480 h264 anchor clips (benchmarks/bench_decode.py,
source frames/s at 224 px: 30 fps 1280 vs 940, 5 fps 2700 vs 1600, 1 fps 4000 vs 2500,
0.25 fps 9800 vs 7800; the raw PyAV loop: 1310, 2630, 2880, 3480), and because decord returned
wrong pictures silently on an HEVC test file (right timestamps, frames of a neighbouring index)
and fails on some resize widths. decord stays available, restricted to `DECORD_CODECS`, for
machines where it measures faster.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

from pipeline.decode import decord as _decord
from pipeline.decode import pyav as _pyav
from pipeline.decode.base import (
    BACKENDS,
    DECORD_CODECS,
    RESIZE_MODES,
    CorruptVideoError,
    DecodeRequest,
    FrameBlock,
    FramePicker,
    MissingVideoError,
    VideoInfo,
    check_complete,
    empty_span_error,
    last_frame_end,
    pick_frame_indices,
    resize_geometry,
    timestamp_tolerance,
)
from pipeline.decode.pyav import resize_like_decode
from pipeline.uri import is_remote

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS", "DECORD_CODECS", "RESIZE_MODES", "CorruptVideoError", "DecodeRequest", "FrameBlock", "FramePicker",
    "MissingVideoError", "VideoInfo", "check_complete", "choose_backend", "decode_frames", "empty_span_error",
    "last_frame_end", "pick_frame_indices", "probe_video", "resize_geometry", "resize_like_decode",
    "timestamp_tolerance",
]


def probe_video(uri: str, byte_range: tuple[int, int] | None = None) -> VideoInfo:
    """Read the container header (and one frame, for the rotation side data) of `uri` (of its
    bytes `byte_range` = (offset, length) when the video is a member of a bigger file).

    Raises `CorruptVideoError` when the file is not a readable video and `MissingVideoError` (a
    FileNotFoundError too) when it does not exist.
    """
    return _pyav.probe_pyav(uri, byte_range)


def choose_backend(backend: str, uri: str, byte_range: tuple[int, int] | None = None) -> str:
    """The backend a call starts with: "auto" means PyAV (see the module docstring for the
    measurements behind it); decord only ever reads whole local files (it loads file objects
    whole), so a remote video or a tar member always decodes with PyAV."""
    if backend == "decord" and not is_remote(uri) and byte_range is None:
        return "decord"
    return "pyav"


def decode_frames(
    uri: str,
    *,
    fps: float,
    size: int,
    start_s: float = 0.0,
    end_s: float | None = None,
    resize: str = "center_crop",
    max_seconds: float | None = None,
    block_frames: int = 32,
    backend: str = "auto",
    byte_range: tuple[int, int] | None = None,
) -> Iterator[FrameBlock]:
    """Yield the frames of `uri` in [start_s, end_s) picked at `fps`, as blocks of at most
    `block_frames` upright RGB frames of `size` x `size` (see the module docstring for the rules).

    `uri` is a local path or an fsspec URL (remote files always decode with PyAV through a file
    object, never downloaded whole); `byte_range` = (offset, length) decodes only those bytes of
    it, in place: a video member of a webdataset tar shard. `backend` is "auto" (= PyAV, see `choose_backend`), "pyav",
    or "decord" (falls back to PyAV on any decord failure).

    Raises CorruptVideoError (bad input) for unreadable, truncated or empty videos (possibly after
    yielding some blocks) and for a missing file (`MissingVideoError`, also a FileNotFoundError),
    ValueError for bad arguments; a fault of the network or storage underneath is not the video's
    and is raised as what `pipeline.errors.classify` calls infrastructure.
    """
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size!r}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if block_frames < 1:
        raise ValueError(f"block_frames must be >= 1, got {block_frames!r}")
    end = math.inf if end_s is None else float(end_s)
    if max_seconds is not None:
        end = min(end, start_s + max_seconds)
    request = DecodeRequest(uri, float(fps), int(size), float(start_s), end, resize, int(block_frames),
                            None if byte_range is None else (int(byte_range[0]), int(byte_range[1])))
    if end <= start_s:
        return iter(())
    return _decode(request, backend)  # a generator: arguments are checked now, the file when iterated


def _decode(request: DecodeRequest, backend: str) -> Iterator[FrameBlock]:
    if choose_backend(backend, request.uri, request.byte_range) == "pyav":
        yield from _pyav.decode_pyav(request)
        return

    info = probe_video(request.uri)
    last_ts = -math.inf
    try:
        for block in _decord.decode_decord(request, info):
            last_ts = float(block.timestamps[-1])
            yield block
        return
    except _decord.DecordFailure as exc:
        log.warning("decord failed on %s (%s); decoding with PyAV instead", request.uri, exc)
    # Resume after what decord already delivered: both backends pick the same frames.
    yield from _pyav.decode_pyav(request, info, after_s=last_ts)
