"""Test media made on the fly: real encoded videos whose pixels say which source frame they are.

Every frame shows a 4 x 4 grid of black/white cells in the centre square of the picture (the
part `center_crop` keeps). The top-left corner cell is white and the other three corners are
black, so orientation is checkable; the 12 remaining cells hold the frame index in binary, MSB
first, row by row. Cells are a quarter of the short side, which survives lossy codecs and
resizing down to 32 px; `read_index` reads a decoded, resized frame back.

Everything is deterministic and small (96 x 64 px, a few seconds), so the whole set encodes in a
few seconds. `make_media(folder)` writes the lot and describes each file with a `Clip`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.samples.lerobot_v3 import scheduling_kept

GRID = 4
_CORNERS = {(0, 0): 255, (0, GRID - 1): 0, (GRID - 1, 0): 0, (GRID - 1, GRID - 1): 0}
_BIT_CELLS = [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in _CORNERS]
MAX_INDEX = 2 ** len(_BIT_CELLS) - 1

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its config banner to stderr otherwise

# name -> (encoder, container format / extension, encoder options). AV1 uses LeRobot's settings.
CODECS: dict[str, tuple[str, str, dict[str, str]]] = {
    "h264": ("libx264", "mp4", {"g": "15"}),
    "vp9": ("libvpx-vp9", "webm", {"deadline": "realtime", "cpu-used": "8", "g": "15"}),
    "mpeg4": ("mpeg4", "avi", {"g": "15", "qscale": "3"}),
    "av1": ("libsvtav1", "mp4", {"g": "2", "crf": "30"}),  # preset 12 drops 1-cell changes
    "hevc": ("libx265", "mov", {"x265-params": "log-level=error:keyint=15"}),
}


class NotUprightError(ValueError):
    """The corner markers are not where an upright frame has them."""


@dataclass(frozen=True)
class Clip:
    """A generated file and the truth about it."""

    path: Path
    codec: str
    pts: tuple[float, ...]  # presentation time of frame i (seconds) as written
    width: int  # display size (after rotation)
    height: int
    rotation: int = 0  # display-matrix rotation written, degrees counter-clockwise
    episodes: tuple[tuple[int, int], ...] = field(default=())  # [first, last+1) frame index per episode

    @property
    def duration(self) -> float:
        step = self.pts[-1] - self.pts[-2] if len(self.pts) > 1 else 1 / 30
        return self.pts[-1] + step

    def displayed_at(self, t: float) -> int:
        """Index of the frame a player shows at time t (the first one before the first pts)."""
        return max(0, int(np.searchsorted(np.asarray(self.pts), t + 1e-9, side="right")) - 1)


def frame_image(index: int, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 upright picture of frame `index`."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"frame index {index} does not fit the {len(_BIT_CELLS)}-bit pattern")
    img = np.full((height, width, 3), 128, np.uint8)
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    edges = np.linspace(0, side, GRID + 1).round().astype(int)
    values = dict(_CORNERS)
    for k, cell in enumerate(_BIT_CELLS):
        values[cell] = 255 if (index >> (len(_BIT_CELLS) - 1 - k)) & 1 else 0
    for (r, c), v in values.items():
        img[y0 + edges[r] : y0 + edges[r + 1], x0 + edges[c] : x0 + edges[c + 1]] = v
    return img


def _cells(frame: np.ndarray, region: tuple[float, float, float, float]) -> np.ndarray:
    """(GRID, GRID) bool: is each cell bright, from the mean of its inner half."""
    h, w = frame.shape[:2]
    luma = frame.astype(np.float32).mean(axis=2)
    fx0, fx1, fy0, fy1 = region
    xs = np.linspace(fx0 * w, fx1 * w, GRID + 1)
    ys = np.linspace(fy0 * h, fy1 * h, GRID + 1)
    out = np.zeros((GRID, GRID), bool)
    for r in range(GRID):
        for c in range(GRID):
            cw, ch = xs[c + 1] - xs[c], ys[r + 1] - ys[r]
            xa, xb = int(xs[c] + cw / 4), max(int(xs[c] + cw / 4) + 1, int(xs[c + 1] - cw / 4))
            ya, yb = int(ys[r] + ch / 4), max(int(ys[r] + ch / 4) + 1, int(ys[r + 1] - ch / 4))
            out[r, c] = luma[ya:yb, xa:xb].mean() > 128
    return out


def read_index(frame: np.ndarray, region: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)) -> int:
    """Frame index written by `frame_image`, read from a decoded (possibly resized) RGB frame.

    `region` is where the grid lies as fractions (x0, x1, y0, y1) of the frame: the whole frame
    for a `center_crop` output, `grid_region(w, h)` for a `squash` output. Raises NotUprightError
    when the corner markers show the frame rotated or flipped.
    """
    cells = _cells(frame, region)
    corners = {cell: bool(cells[cell]) for cell in _CORNERS}
    if corners != {cell: v == 255 for cell, v in _CORNERS.items()}:
        raise NotUprightError(f"corner cells {corners} are not those of an upright frame")
    index = 0
    for cell in _BIT_CELLS:
        index = (index << 1) | int(cells[cell])
    return index


def grid_region(width: int, height: int) -> tuple[float, float, float, float]:
    """Where the grid of a width x height picture lies after a `squash` resize."""
    side = min(width, height)
    x0, y0 = (width - side) / 2 / width, (height - side) / 2 / height
    return (x0, 1 - x0, y0, 1 - y0)


def write_clip(
    path: Path,
    codec: str,
    pts: list[float],
    width: int = 96,
    height: int = 64,
    *,
    rotation: int = 0,
    first_index: int = 0,
    time_base: Fraction | None = None,
) -> Clip:
    """Encode frames first_index, first_index+1, ... shown at `pts` (seconds) with codec `codec`.

    `width` x `height` is the display size; with a 90/-90 `rotation` the stored picture is the
    transposed size, rotated so that a player honouring the display matrix shows it upright.
    """
    encoder, _, options = CODECS[codec]
    if time_base is None:  # CFR: one tick per frame; VFR callers pass a fine time base
        time_base = Fraction(1, round(1 / (pts[1] - pts[0]))) if len(pts) > 1 else Fraction(1, 30)
    quarter = rotation % 180 == 90
    sw, sh = (height, width) if quarter else (width, height)
    with scheduling_kept(), av.open(str(path), "w") as container:  # libsvtav1: see scheduling_kept
        stream = container.add_stream(encoder, rate=round(1 / float(time_base)) if len(pts) > 1 else 30)
        stream.width, stream.height, stream.pix_fmt = sw, sh, "yuv420p"
        stream.codec_context.time_base = time_base
        stream.options = dict(options)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, t in enumerate(pts):
            img = frame_image(first_index + i, width, height)
            stored = np.ascontiguousarray(np.rot90(img, k=-(rotation // 90))) if rotation else img
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            frame.pts, frame.time_base = round(t / time_base), time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Clip(Path(path), codec, tuple(pts), width, height, rotation)


def cfr_pts(n: int, fps: float = 30.0, start: float = 0.0) -> list[float]:
    return [start + i / fps for i in range(n)]


def vfr_pts() -> list[float]:
    """Irregular frame times in whole milliseconds: bursts, pauses and a 250 ms hole."""
    steps_ms = [33, 17, 50, 100, 33, 66, 250, 20, 40, 10, 120, 33]
    out, t = [], 0
    for i in range(60):
        out.append(t / 1000)
        t += steps_ms[i % len(steps_ms)]
    return out


def make_media(folder: Path) -> dict[str, Clip]:
    """Write every test file into `folder`; keys name the case."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clips: dict[str, Clip] = {}
    for name, (_, ext, _) in CODECS.items():
        clips[name] = write_clip(folder / f"clip_{name}.{ext}", name, cfr_pts(90))
    clips["vfr"] = write_clip(folder / "vfr.mp4", "h264", vfr_pts(), time_base=Fraction(1, 1000))
    for rot in (90, -90, 180):
        clips[f"rot{rot}"] = write_clip(folder / f"rot{rot}.mp4", "h264", cfr_pts(30), 64, 96, rotation=rot)
    clips["odd"] = write_clip(folder / "odd.mp4", "h264", cfr_pts(30), 322, 242)
    for codec in ("h264", "av1"):  # LeRobot v3.0: episodes back to back in one file
        bounds, first = [], 0
        for n in (47, 61, 52):
            bounds.append((first, first + n))
            first += n
        clip = write_clip(folder / f"episodes_{codec}.mp4", codec, cfr_pts(first))
        clips[f"episodes_{codec}"] = Clip(clip.path, codec, clip.pts, clip.width, clip.height, episodes=tuple(bounds))
    # Broken files.
    data = clips["h264"].path.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    data = clips["vp9"].path.read_bytes()
    (folder / "truncated.webm").write_bytes(data[: len(data) // 2])
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is a text file, not a video\n")
    _write_audio_only(folder / "audio_only.mkv")
    return clips


def _write_audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
