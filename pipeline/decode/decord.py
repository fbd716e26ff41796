"""decord backend of `pipeline.decode`: random access by frame index on local files.

decord reads the whole packet index when it opens a file, so it knows every frame's timestamp
up front: the timestamp rule (`pick_frame_indices`, the same code PyAV's path streams through)
turns the span into frame indices, and `VideoReader.get_batch` fetches them block by block,
seeking to a keyframe whenever the next pick lies beyond one instead of decoding the gap.

Anything decord does wrong or cannot do raises `DecordFailure`, and `pipeline.decode` continues
with PyAV from the first frame not yet delivered. Known limits of decord 0.6 (the pip wheel): it
cannot open AV1; it applies rotation metadata but returns wrong shapes when asked to resize a
rotated file; it loads a file object's bytes whole, so remote files never come here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from pipeline.decode.base import (
    DECORD_CODECS,
    DecodeRequest,
    FrameBlock,
    VideoInfo,
    check_complete,
    empty_span_error,
    last_frame_end,
    pick_frame_indices,
    resize_geometry,
    timestamp_tolerance,
)
from pipeline.errors import one_line
from pipeline.uri import local_path

log = logging.getLogger(__name__)


class DecordFailure(RuntimeError):
    """decord could not open or decode this file; the caller falls back to PyAV."""


def decode_decord(request: DecodeRequest, info: VideoInfo) -> Iterator[FrameBlock]:
    """Blocks of picked frames of `request`, decoded with decord (local, unrotated files only)."""
    try:
        import decord
    except ImportError as exc:  # an optional speed-up, never a requirement
        raise DecordFailure("decord is not installed (pip install decord)") from exc
    if info.rotation % 360:
        raise DecordFailure(f"rotation {info.rotation} is not handled by decord's resize")
    if info.codec not in DECORD_CODECS:
        raise DecordFailure(f"codec {info.codec} is not one decord decodes correctly")
    size, bsz = request.size, request.block_frames
    sw, sh, x0, y0 = resize_geometry(info.width, info.height, size, request.resize)
    try:
        reader = decord.VideoReader(local_path(request.uri), ctx=decord.cpu(0), width=sw, height=sh, num_threads=1)
        n_frames = len(reader)
        times = reader.get_frame_timestamp(np.arange(n_frames)) if n_frames else np.zeros((0, 2))
    except Exception as exc:  # decord raises its own DECORDError, RuntimeError, IndexError...
        raise DecordFailure(f"cannot open: {one_line(exc)}") from exc
    if n_frames == 0:
        raise DecordFailure("no frames indexed")
    starts = np.asarray(times[:, 0], dtype=np.float64)  # (n,) pts seconds
    if np.any(np.diff(starts) <= 0):
        raise DecordFailure("frame timestamps are not strictly increasing")
    last_gap = float(starts[-1] - starts[-2]) if n_frames > 1 else 1 / (info.fps or 30)
    display_end = last_frame_end(float(starts[-1]), last_gap, info.duration_s, info.start_s)
    tol = timestamp_tolerance(info.time_base, info.fps)
    picks = pick_frame_indices(
        starts, fps=request.fps, start_s=request.start_s, end_s=request.end_s, tol=tol, display_end=display_end
    )
    if not len(picks):
        check_complete(request, display_end, info.duration_s, info.start_s, info.fps)
        raise empty_span_error(request, info.start_s, float(starts[-1]))
    for b in range(0, len(picks), bsz):
        sel = picks[b : b + bsz]
        try:
            batch = reader.get_batch(sel.tolist()).asnumpy()  # (k, sh, sw, 3)
        except Exception as exc:
            raise DecordFailure(f"get_batch failed near {starts[sel[0]]:.3f}s: {exc}") from exc
        if batch.shape != (len(sel), sh, sw, 3):
            raise DecordFailure(f"got frames of shape {batch.shape[1:]}, expected {(sh, sw, 3)}")
        frames = np.ascontiguousarray(batch[:, y0 : y0 + size, x0 : x0 + size])
        yield FrameBlock(frames, starts[sel] - request.start_s)
    check_complete(request, display_end, info.duration_s, info.start_s, info.fps)
