"""PyAV (FFmpeg) backend of `pipeline.decode`: the reference that decodes whatever FFmpeg decodes.

Speed choices, each measured on the 2-core CPU machine (benchmarks/bench_decode.py):

* frames are decoded in order and only the picked ones are converted: the YUV->RGB conversion and
  resize (swscale) costs more than decoding a 480p h264 frame, so skipping it for the frames the
  target rate drops is the main saving of a sparse decode;
* conversion and resize are one swscale call straight to the scaled size with ``threads=1``:
  av 18's default lets swscale spawn its own threads per call, which halved throughput here;
  ``AREA`` interpolation (proper averaging when shrinking) was also faster than bilinear;
* a span that starts late in a file is reached by seeking to a keyframe before it (and checking
  that the seek landed before the span), never by decoding the file from the start;
* sparse decode: when a keyframe lies at least 3 frames past the last decoded frame and at or
  before the next target, we seek to it instead of decoding the gap (keyframes from the
  container index, every seek checked). On 640x480 h264 with a keyframe every 2 s this made
  0.25 fps 2.9x and 1 fps 1.4x faster than sequential decoding; on LeRobot-style AV1 (a keyframe
  every 2 frames) 5 fps went from 450 to 1050 source frames/s, pixel-identical output;
* FFmpeg's default slice threading is kept: frame threading was slower on 2 cores, where the
  Python thread converting frames needs the second core.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction

import av
import numpy as np

from pipeline.decode.base import (
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
    resize_geometry,
    timestamp_tolerance,
)
from pipeline.errors import classify
from pipeline.uri import is_remote, local_path, open_range
from schemas.errors import InfrastructureError

log = logging.getLogger(__name__)

_SEEK_MARGIN_S = 1.0  # seek this far before the span so B-frame reordering cannot land us inside it
_SKIP_MIN_FRAMES = 3  # skip ahead only past at least this many frames: a seek flushes the decoder
_FIX = "re-download or re-encode the file"


@contextmanager
def open_container(uri: str, byte_range: tuple[int, int] | None = None) -> Iterator[av.container.InputContainer]:
    """Open `uri` (local path or fsspec URL) for reading; close it (and the remote file) after.
    With `byte_range` (offset, length), only those bytes of the file are the video: a tar
    member, read in place through `pipeline.uri.open_range`.

    A missing file raises `MissingVideoError` (a CorruptVideoError and a FileNotFoundError);
    bytes FFmpeg cannot read raise CorruptVideoError; a fault of the network or the storage
    underneath (a connection reset, a timeout, EIO) is raised as it is, or as an
    `InfrastructureError`: see `_read_failure`.
    """
    name = uri if byte_range is None else f"{uri} (bytes {byte_range[0]}-{sum(byte_range)})"
    remote = None
    try:
        if byte_range is not None:
            remote = open_range(uri, *byte_range)
            container = av.open(remote, mode="r")
        elif is_remote(uri):
            import fsspec

            remote = fsspec.open(uri, "rb").open()
            container = av.open(remote, mode="r")
        else:
            container = av.open(local_path(uri), mode="r")
    except (av.error.FFmpegError, OSError) as exc:
        if remote is not None:
            remote.close()
        raise _read_failure(name, exc, "cannot open as a video") from exc
    try:
        yield container
    finally:
        container.close()
        if remote is not None:
            remote.close()


def _read_failure(uri: str, exc: BaseException, what: str) -> BaseException:
    """What an exception raised while opening or decoding `uri` means.

    Only FFmpeg's verdict on the bytes (invalid data, no stream, an unexpected end...) makes
    the video bad input. An error of the reading machinery (an S3 connection reset, a timeout,
    EIO from fsspec, a full or read-only disk) says nothing about the file: it is returned as
    it is when `classify` already calls it infrastructure or resource, and any other OSError
    raised by Python-side I/O (an fsspec file object) becomes an InfrastructureError, so the run
    stops, retryable, instead of quarantining a good video.
    """
    if isinstance(exc, FileNotFoundError):
        return MissingVideoError(f"{uri}: no such file; it was listed but is gone, re-download it or drop it")
    if isinstance(exc, IsADirectoryError | NotADirectoryError):
        return CorruptVideoError(f"{uri}: {what} ({_reason(exc)}); point the episode at a video file")
    if classify(exc) in ("infrastructure", "resource"):
        return exc
    if isinstance(exc, av.error.FFmpegError):
        return CorruptVideoError(f"{uri}: {what} ({_reason(exc)}); {_FIX}")
    return InfrastructureError(f"{uri}: reading failed ({type(exc).__name__}: {_reason(exc)}); retry the run")


def _reason(exc: BaseException) -> str:
    """One line of FFmpeg's complaint, without the errno prefix."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc)).splitlines()
    return text[0] if text else type(exc).__name__


def _video_stream(container: av.container.InputContainer, uri: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise CorruptVideoError(f"{uri}: no video stream in the file; drop the episode or point at the video")
    return container.streams.video[0]


def _declared_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """Video stream duration from the stream, its Matroska DURATION tag, or the container."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        match = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", tag.strip())
        if match:
            h, m, s = match.groups()
            return int(h) * 3600 + int(m) * 60 + float(s)
    if container.duration:
        return container.duration / 1_000_000
    return None


def _nominal_fps(stream: av.video.stream.VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


def _rotation(frame: av.VideoFrame) -> int:
    """Display rotation in degrees counter-clockwise, snapped to a multiple of 90."""
    try:
        rot = int(frame.rotation)
    except (AttributeError, TypeError, ValueError):
        return 0
    return (round(rot / 90) * 90) % 360


def _stream_start(stream: av.video.stream.VideoStream) -> float:
    if stream.start_time is None or not stream.time_base:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _info(container: av.container.InputContainer, stream: av.video.stream.VideoStream, rotation: int) -> VideoInfo:
    tb = stream.time_base or Fraction(1, 1000)
    start = _stream_start(stream)
    return VideoInfo(
        duration_s=_declared_duration(container, stream),
        fps=_nominal_fps(stream),
        n_frames=stream.frames or None,
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        rotation=rotation,
        codec=stream.codec.canonical_name if stream.codec else stream.codec_context.name,
        start_s=start,
        time_base=Fraction(tb),
    )


def probe_pyav(uri: str, byte_range: tuple[int, int] | None = None) -> VideoInfo:
    """Container header plus the first decoded frame (FFmpeg exposes rotation only on frames)."""
    with open_container(uri, byte_range) as container:
        stream = _video_stream(container, uri)
        try:
            first = next(container.decode(stream), None)
        except (av.error.FFmpegError, OSError) as exc:
            raise _read_failure(uri, exc, "first frame does not decode") from exc
        if first is None:
            raise CorruptVideoError(f"{uri}: the video stream holds no decodable frame; {_FIX}")
        return _info(container, stream, _rotation(first))


class _FrameSource:
    """Decoded frames of one stream in presentation order, repositioned by seeks that are checked.

    A seek lands on a keyframe found by its index timestamp, which for B-frame streams is a
    *decode* time: the keyframe's presentation time can be later than asked. Every seek here is
    therefore verified against the first frame it yields and undone when it went too far.
    """

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream, tol: float):
        self.container, self.stream, self.tol = container, stream, tol
        self.tb = stream.time_base or Fraction(1, 1000)
        self.stream_start = _stream_start(stream)
        nominal = _nominal_fps(stream)
        self.min_gain = _SKIP_MIN_FRAMES / nominal if nominal else 0.1
        self._keyframes: np.ndarray | None = None  # index timestamps (s) of keyframes, built on demand
        self._keyframe_ts: list[int] = []  # the same in stream ticks
        self._skip_enabled = True
        self.skips = 0

    def _seek(self, t: float) -> None:
        self.container.seek(int(t / self.tb), stream=self.stream, backward=True, any_frame=False)

    def frames_from(self, start_s: float) -> Iterator[av.VideoFrame]:
        """Frames from a keyframe whose first frame precedes `start_s`, or from the beginning.

        Seeks `_SEEK_MARGIN_S` early and backs off (x4) until the first frame lands before the
        span; decoding from the file start is the last resort.
        """
        back, moved = _SEEK_MARGIN_S, False
        while start_s - back > self.stream_start:
            moved = True
            try:
                self._seek(start_s - back)
                frames = self.container.decode(self.stream)
                first = next(frames, None)
            except av.error.FFmpegError as exc:
                log.debug("seek in %s failed (%s); decoding from the start", self.container.name, exc)
                break
            if first is not None and first.time is not None and first.time < start_s - self.tol:
                return itertools.chain([first], frames)
            back *= 4
        if moved:  # no seek landed before the span: rewind to the first keyframe
            self.container.seek(self.stream.start_time or 0, stream=self.stream, backward=True, any_frame=False)
        return self.container.decode(self.stream)

    def skip_ahead(self, pts: float, next_target: float) -> Iterator[av.VideoFrame] | None:
        """Sparse decode: when a keyframe lies well between the last decoded frame (`pts`) and the
        next target, jump to it instead of decoding the gap. Returns the new frame iterator, or
        None to keep decoding in order. Frames at or before `pts` that a seek brings back again
        are dropped by `FramePicker` (it ignores non-increasing pts)."""
        if not self._skip_enabled or next_target - pts < self.min_gain:
            return None
        if self._keyframes is None:
            # Index times of B-frame mp4 streams are decode times, ahead of presentation by the
            # reorder delay (the first keyframe is indexed at -2 frames and shown at 0), while
            # seeking compares presentation times: shift the index by that delay.
            entries = self.stream.index_entries or []
            ticks = [e.timestamp for e in entries if e.is_keyframe]
            shift = max(0, (self.stream.start_time or 0) - ticks[0]) if ticks else 0
            self._keyframe_ts = [t + shift for t in ticks]  # exact ticks, to seek with
            self._keyframes = np.array(self._keyframe_ts, np.float64) * float(self.tb)
        k = int(np.searchsorted(self._keyframes, next_target + self.tol, side="right")) - 1
        if k < 0 or self._keyframes[k] < pts + self.min_gain:
            return None
        self.container.seek(self._keyframe_ts[k], stream=self.stream, backward=True, any_frame=False)
        frames = self.container.decode(self.stream)
        first = next(frames, None)
        landed = first.time if first is not None else None
        if landed is not None and pts < landed <= next_target + self.tol:
            self.skips += 1
            return itertools.chain([first], frames)
        # Went past the next target (or nowhere useful): go back before `pts` and stop skipping.
        log.debug("skip-ahead in %s landed at %s for target %.3f; disabled", self.container.name, landed, next_target)
        self._skip_enabled = False
        return self.frames_from(pts)


def _swscale_geometry(width: int, height: int, rotation: int, size: int, resize: str) -> tuple[int, int, int, int]:
    """For a coded (width, height) frame shown rotated by `rotation`: the (w, h) to ask swscale
    for (pre-rotation) and the (x0, y0) of the size x size crop in the upright scaled frame."""
    quarter = rotation % 180 == 90
    dw, dh = (height, width) if quarter else (width, height)
    sw, sh, x0, y0 = resize_geometry(dw, dh, size, resize)
    return (sh, sw, x0, y0) if quarter else (sw, sh, x0, y0)


class _Converter:
    """Picked frame -> (size, size, 3) upright RGB, one swscale call per frame."""

    def __init__(self, size: int, resize: str) -> None:
        self.size, self.resize = size, resize
        self._key: tuple[int, int, int] | None = None

    def into(self, frame: av.VideoFrame, rotation: int, out: np.ndarray) -> None:
        key = (frame.width, frame.height, rotation)
        if key != self._key:
            self._geometry = _swscale_geometry(frame.width, frame.height, rotation, self.size, self.resize)
            self._key = key
        width, height, x0, y0 = self._geometry
        rgb = frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA", threads=1)
        if rotation:
            rgb = np.rot90(rgb, k=rotation // 90)  # rotation is counter-clockwise, as is rot90
        out[...] = rgb[y0 : y0 + self.size, x0 : x0 + self.size]


def resize_like_decode(frames: np.ndarray | Sequence[np.ndarray], size: int, resize: str = "center_crop") -> np.ndarray:
    """Upright RGB frames (n, H, W, 3) uint8 -- or a sequence of (H, W, 3) uint8 frames whose sizes
    may differ, as images decoded one by one come -- -> (n, size, size, 3), through the pixel path a
    frame of an ingested video took: rgb24 -> yuv420p (as the video encoder stored it) -> the
    same swscale call and crop as `decode_pyav`. Closed-loop evaluation feeds the encoder with
    this, so a policy sees live frames preprocessed exactly like its training features (codec
    loss aside: the chroma subsampling and the AREA filter are reproduced, compression is not).

    Exact for AV1 and VP9 (LeRobot's default codec, and the sample corpora's): a lossless VP9
    round trip decodes to the same bytes. h264/HEVC decoders tag their frames' chroma siting
    ("left"), which FFmpeg 8's swscale honours and PyAV cannot set on a frame it builds: there
    this path differs by ~0.7 grey levels on average.
    """
    if isinstance(frames, np.ndarray) and (frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8):
        raise ValueError(f"expected uint8 frames (n, H, W, 3), got {frames.dtype} {frames.shape}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    out = np.empty((len(frames), size, size, 3), np.uint8)
    convert = _Converter(size, resize)
    for i, rgb in enumerate(frames):
        if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames (H, W, 3), got {rgb.dtype} {rgb.shape}")
        yuv = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
        convert.into(yuv, 0, out[i])
    return out


def decode_pyav(
    request: DecodeRequest, info: VideoInfo | None = None, *, after_s: float = -math.inf
) -> Iterator[FrameBlock]:
    """Blocks of picked frames of `request`, decoded with PyAV.

    `after_s` (relative to start_s) drops picks already delivered by another backend that failed
    part way, so a fallback continues the sequence instead of repeating it.
    """
    uri, size, bsz = request.where, request.size, request.block_frames  # uri: as messages name it
    with open_container(request.uri, request.byte_range) as container:
        stream = _video_stream(container, uri)
        tb = stream.time_base or Fraction(1, 1000)
        nominal = _nominal_fps(stream)
        tol = timestamp_tolerance(tb, nominal)
        picker = FramePicker(request.start_s, request.end_s, request.fps, tol)
        convert = _Converter(size, request.resize)
        rotation: int | None = None
        frames = np.empty((bsz, size, size, 3), np.uint8)
        stamps = np.empty(bsz, np.float64)
        n = 0
        last_pts, last_dur, n_decoded = -math.inf, 0.0, 0
        gap_from = -math.inf  # pts of the frame decoded just before, for the last frame's duration

        def keep(picked: list) -> Iterator[FrameBlock]:
            nonlocal frames, stamps, n
            for pts, frame in picked:
                rel = pts - request.start_s
                if rel <= after_s + tol / 2:
                    continue
                convert.into(frame, rotation, frames[n])
                stamps[n] = rel
                n += 1
                if n == bsz:
                    yield FrameBlock(frames, stamps)
                    frames, stamps, n = np.empty_like(frames), np.empty_like(stamps), 0

        source = _FrameSource(container, stream, tol)
        try:
            frames_in = source.frames_from(request.start_s)
            while (frame := next(frames_in, None)) is not None:
                n_decoded += 1
                if rotation is None:
                    rotation = _rotation(frame)
                pts = frame.time if frame.pts is not None else last_pts + (last_dur or 1 / (nominal or 30))
                if pts > gap_from > -math.inf:  # the last frame is shown as long as the one before it
                    last_dur = pts - gap_from  # (packet durations disagree between demuxers and decord)
                last_pts = gap_from = max(last_pts, pts)
                yield from keep(picker.push(pts, frame))
                if picker.finished:
                    break
                if (jumped := source.skip_ahead(pts, picker.next_target)) is not None:
                    frames_in, gap_from = jumped, -math.inf
            else:
                if n_decoded == 0:
                    raise CorruptVideoError(f"{uri}: the video stream holds no decodable frame; {_FIX}")
                duration = info.duration_s if info is not None else _declared_duration(container, stream)
                decoded_end = last_frame_end(last_pts, last_dur or 1 / (nominal or 30), duration, _stream_start(stream))
                yield from keep(picker.finish(decoded_end))
                check_complete(request, decoded_end, duration, _stream_start(stream), nominal)
        except (av.error.FFmpegError, OSError) as exc:
            at = f"after {last_pts:.3f}s" if n_decoded else "at the first frame"
            raise _read_failure(uri, exc, f"decoding failed {at}") from exc
        if n:
            yield FrameBlock(frames[:n].copy(), stamps[:n].copy())
        log.debug("%s: decoded %d frames, kept %d, %d skip-ahead seeks", uri, n_decoded, picker.n_kept, source.skips)
        if picker.n_kept == 0:
            raise empty_span_error(request, _stream_start(stream), last_pts)
