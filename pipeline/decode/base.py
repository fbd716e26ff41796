"""What every decode backend shares: the request and result types, the bad-file error, and the
frame-timing rule (`FramePicker`, `pick_frame_indices`) and geometry both backends apply.

Imports no backend: `pipeline.decode` (the dispatcher) and each backend module import this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from schemas.errors import BadInputError

RESIZE_MODES = ("center_crop", "squash")
BACKENDS = ("auto", "decord", "pyav")

# Codecs decord 0.6 decodes correctly in our tests. Not AV1 (cannot open) nor HEVC (sparse
# get_batch returned frames of other indices); anything else is left to PyAV.
DECORD_CODECS = frozenset({"h264", "mpeg4", "vp9"})


class CorruptVideoError(BadInputError):
    """The file cannot be decoded as a video: unreadable container, truncated stream, no video
    stream, zero bytes, not a video at all. The message is one line naming the file and the fault;
    the fix is to re-download or re-encode the file, or to drop the episode."""


class MissingVideoError(CorruptVideoError, FileNotFoundError):
    """The video is not there (deleted or moved after the source was listed): bad input of this
    episode, and still a FileNotFoundError for callers that test for one."""


@dataclass
class FrameBlock:
    """Consecutive picked frames of one video span, in presentation order."""

    frames: np.ndarray  # (n, size, size, 3) uint8 RGB, upright
    timestamps: np.ndarray  # (n,) float64 seconds relative to start_s: true pts of each picked frame

    def __len__(self) -> int:
        return len(self.timestamps)


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about its first video stream, read without decoding it."""

    duration_s: float | None  # declared duration of the video stream (container's, if the stream has none)
    fps: float | None  # nominal (average) frame rate; meaningless for variable-frame-rate files
    n_frames: int | None  # frame count when the container records it (mp4/avi), else None
    width: int  # coded width, before rotation
    height: int  # coded height, before rotation
    rotation: int  # display rotation, degrees counter-clockwise (FFmpeg's convention): 0, 90, 180 or 270
    codec: str  # canonical codec name: h264, hevc, av1, vp9, mpeg4, ...
    start_s: float = 0.0  # pts of the stream's first frame, seconds
    time_base: Fraction = field(default=Fraction(1, 1000))  # unit of the stored timestamps

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as a player shows it, i.e. after rotation."""
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)


@dataclass(frozen=True)
class DecodeRequest:
    """The validated arguments of one `decode_frames` call, handed to a backend."""

    uri: str
    fps: float
    size: int
    start_s: float
    end_s: float  # min(end_s, start_s + max_seconds); math.inf when open-ended
    resize: str
    block_frames: int
    byte_range: tuple[int, int] | None = None  # (offset, length) of the video inside `uri`: a tar member

    @property
    def where(self) -> str:
        """The video as error messages name it: the file, and the member's bytes when it is one."""
        if self.byte_range is None:
            return self.uri
        offset, length = self.byte_range
        return f"{self.uri} (bytes {offset}-{offset + length})"


def timestamp_tolerance(time_base: Fraction | None, fps: float | None) -> float:
    """Slack used when comparing a frame's pts with a target time.

    Stored timestamps are rounded to the container's time base (Matroska/WebM: 1 ms, so frame 2 of a
    30 fps clip sits at 0.067 s instead of 0.0667 s); half a tick plus 0.1 ms absorbs that. It stays
    below a quarter of a frame so that a coarse time base (AVI: 1/fps) never shifts a pick by a frame.
    """
    tol = 1e-4
    if time_base:
        tol = max(tol, 0.5 * float(time_base) + 1e-6)
    if fps and fps > 0:
        tol = min(tol, 0.25 / fps)
    return tol


class FramePicker:
    """The timestamp rule as a streaming state machine shared by both backends.

    Feed it the source frames' pts in presentation order with `push`; it answers with the items
    (frames, indices...) to keep, each once, in order. `finish` flushes at end of stream.
    """

    def __init__(self, start_s: float, end_s: float, fps: float, tol: float) -> None:
        self.start_s, self.end_s, self.fps, self.tol = start_s, end_s, fps, tol
        self.j = 0  # index of the first target not yet resolved
        self._prev: tuple[float, Any] | None = None  # latest candidate frame (pts, item)
        self._prev_kept = False
        self._last_pts = -math.inf
        self.finished = False  # no later frame can be picked: stop decoding
        self.n_kept = 0

    def target(self, j: int) -> float:
        return self.start_s + j / self.fps

    @property
    def next_target(self) -> float:
        return self.target(self.j)

    def _first_target_not_before(self, pts: float) -> int:
        """Smallest j >= self.j with t_j + tol >= pts (targets before it are displayed earlier)."""
        j = max(self.j, math.ceil((pts - self.tol - self.start_s) * self.fps) - 2)
        while self.target(j) + self.tol < pts:
            j += 1
        return j

    def _keep_prev(self, out: list[tuple[float, Any]]) -> None:
        if self._prev is not None and not self._prev_kept:
            out.append(self._prev)
            self._prev_kept = True
            self.n_kept += 1

    def push(self, pts: float, item: Any) -> list[tuple[float, Any]]:
        """Offer the next source frame; return the (pts, item) pairs picked so far, in order."""
        out: list[tuple[float, Any]] = []
        if self.finished or pts <= self._last_pts:  # out-of-order or duplicate pts: never picked
            return out
        self._last_pts = pts
        if pts < self.start_s - self.tol:  # before the span: a neighbour's frame
            return out
        j_next = self._first_target_not_before(pts)
        resolved = j_next > self.j and self.target(self.j) < self.end_s
        claim_this = resolved and self._prev is None  # targets before the span's first frame
        if resolved:
            self._keep_prev(out)
        self.j = j_next
        if pts >= self.end_s - self.tol:  # after the span: stop
            self.finished = True
            return out
        self._prev, self._prev_kept = (pts, item), False
        if claim_this:
            self._keep_prev(out)
        if self.target(self.j) >= self.end_s:  # every target resolved; nothing later can be picked
            self.finished = True
        return out

    def finish(self, display_end: float) -> list[tuple[float, Any]]:
        """End of stream: the last frame stays on screen until `display_end` (its pts + duration)."""
        out: list[tuple[float, Any]] = []
        if not self.finished and self.target(self.j) < min(self.end_s, display_end - self.tol):
            self._keep_prev(out)
        self.finished = True
        return out


def pick_frame_indices(
    pts: np.ndarray, *, fps: float, start_s: float = 0.0, end_s: float = math.inf,
    tol: float = 1e-4, display_end: float | None = None,
) -> np.ndarray:
    """Indices into `pts` (sorted presentation times, seconds) that the timestamp rule keeps."""
    picker = FramePicker(start_s, end_s, fps, tol)
    kept: list[int] = []
    for i, p in enumerate(np.asarray(pts, dtype=np.float64)):
        kept.extend(item for _, item in picker.push(float(p), i))
        if picker.finished:
            break
    if len(pts) and not picker.finished:
        last_dur = float(pts[-1] - pts[-2]) if len(pts) > 1 else 1.0 / fps
        end = display_end if display_end is not None else float(pts[-1]) + last_dur
        kept.extend(item for _, item in picker.finish(end))
    return np.asarray(kept, dtype=np.int64)


def resize_geometry(width: int, height: int, size: int, resize: str) -> tuple[int, int, int, int]:
    """For a display-oriented (width, height) frame: the scaled (w, h) to ask the scaler for and
    the (x0, y0) of the size x size crop inside it. Scaling before cropping keeps one resample."""
    if resize == "squash":
        return size, size, 0, 0
    scale = size / min(width, height)
    sw, sh = max(size, round(width * scale)), max(size, round(height * scale))
    return sw, sh, (sw - size) // 2, (sh - size) // 2


def last_frame_end(last_pts: float, last_gap: float, duration: float | None, stream_start: float) -> float:
    """When the last frame stops being shown: as long after it as the gap before it, but not past
    the container's declared end when that is sane (millisecond-rounded gaps overshoot)."""
    end = last_pts + last_gap
    if duration is not None and last_pts < stream_start + duration < end:
        end = stream_start + duration
    return end


def check_complete(
    request: DecodeRequest, decoded_end: float, duration: float | None, stream_start: float, nominal: float | None
) -> None:
    """End of stream reached: raise if the file is shorter than its container says (truncated).

    A truncated file often still opens and decodes its first part, after which FFmpeg just stops.
    We call it corrupt when the decoded video ends well before both the requested end and the
    declared duration (slack: 0.5 s or 3 frames), rather than quietly returning a short episode.
    """
    if duration is None:
        return
    declared_end = stream_start + duration
    slack = max(0.5, 3.0 / nominal) if nominal else 0.5
    if min(request.end_s, declared_end) - decoded_end > slack:
        raise CorruptVideoError(
            f"{request.where}: video stops at {decoded_end:.2f}s but the container declares {declared_end:.2f}s "
            "(truncated or damaged); re-download or re-encode the file"
        )


def empty_span_error(request: DecodeRequest, stream_start: float, last_pts: float) -> CorruptVideoError:
    """No frame at all in the requested span: an empty episode is useless and hides a bad start/end."""
    return CorruptVideoError(
        f"{request.where}: no frame in the span [{request.start_s:.3f}s, {request.end_s:.3f}s) of a video whose "
        f"frames run from {stream_start:.3f}s to {last_pts:.3f}s; check the episode's start/end times"
    )
