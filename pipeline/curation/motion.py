"""Per-frame motion from stored features, and the still spans it reveals.

A frame's motion is how much its features change over `gap` frames — the smaller of the change
to the frame `gap` before and to the frame `gap` after:

    change(t) = min(|f_{t+g} - f_t|, |f_t - f_{t-g}|)        (one side only at the ends)

Taking the smaller side makes a still stretch end exactly where the picture starts to change:
the last still frame has a still neighbour behind it, the first moving frame has motion on both
sides. The gap is in seconds (`MotionConfig.gap_seconds`), so slow motion adds up over it while
sensor noise, which does not add up, stays where it is.

Standardised per source: divided by the source's typical change (a high quantile of its frames'
changes), so one threshold serves a steady robot camera and a shaking head camera alike; the
quantile is high so a source that is half still keeps its scale. A still frame whose relative
change (|Δf| / |f|) is below `static_below` shows one picture held: reason "static"; other still
frames are "idle" (nothing moves, but the picture is alive: noise, light, a shaking camera).
A span's reason is decided by its median frame, so a codec refreshing a held picture at its
keyframes does not make it idle.
"""

from __future__ import annotations

import numpy as np

from schemas.curation import MotionConfig


def gap_frames(fps: float, gap_seconds: float) -> int:
    """The gap in frames at an episode's rate (at least one frame)."""
    return max(1, int(round(fps * gap_seconds)))


def frame_changes(features: np.ndarray, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """(change, relative) per frame, both (N,) float32: the feature change as above (L2 over
    channels, averaged over tokens), and the same divided by the features' own size. An episode
    of one frame has no change (zeros)."""
    f = np.asarray(features, np.float32)
    f = f.reshape(len(f), -1, f.shape[-1])  # (N, T, D); a pooled token mode is T = 1
    n = len(f)
    g = min(gap, n - 1)
    if g < 1:
        return np.zeros(n, np.float32), np.zeros(n, np.float32)
    step = np.linalg.norm(f[g:] - f[:-g], axis=2).mean(1)  # (N - g,) change from t to t + g
    size = np.linalg.norm(f, axis=2).mean(1) + 1e-6  # (N,)
    fwd = np.full(n, np.inf, np.float32)
    bwd = np.full(n, np.inf, np.float32)
    fwd[: n - g] = step
    bwd[g:] = step
    change = np.minimum(fwd, bwd)
    return change, change / size


def source_scale(changes: list[np.ndarray], quantile: float) -> float:
    """A source's typical change: the `quantile` of its frames' changes (1.0 when it has none
    that move, so a source of frozen streams still scores its frames as still)."""
    values = np.concatenate(changes) if changes else np.zeros(0, np.float32)
    scale = float(np.quantile(values, quantile)) if len(values) else 0.0
    return scale if scale > 0 else 1.0


def still_spans(motion: np.ndarray, relative: np.ndarray, fps: float,
                cfg: MotionConfig) -> list[tuple[int, int, str]]:
    """Maximal runs [start, end) of frames whose standardised motion is under `idle_below`,
    lasting at least `min_seconds`, each with its reason: "static" when its median relative
    change is under `static_below` (a picture held: most frames decode the same, whatever a
    codec's keyframes refresh), else "idle"."""
    still = np.asarray(motion) < cfg.idle_below
    if not still.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], still.astype(np.int8), [0]])))
    spans = []
    min_frames = max(1, int(np.ceil(cfg.min_seconds * fps - 1e-6))) if fps > 0 else 1
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        if end - start < min_frames:
            continue
        reason = "static" if float(np.median(relative[start:end])) < cfg.static_below else "idle"
        spans.append((int(start), int(end), reason))
    return spans
