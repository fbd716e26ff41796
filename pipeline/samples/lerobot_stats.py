"""Feature statistics as lerobot 0.4 writes them: per episode in meta/episodes, aggregated in meta/stats.json.

Promise. Every feature gets `min, max, mean, std, count, q01, q10, q50, q90, q99`
with lerobot's shapes and arithmetic (`lerobot/datasets/compute_stats.py`): a vector
feature's stats are (D,) and a scalar's (1,); a video's are per channel in [0, 1],
shaped (3, 1, 1), over lerobot's sample of the episode's frames (all of them up to 100,
then ~N^0.75, downsampled past 300 px); `count` is (1,), the rows (or sampled frames).
Quantiles come from the same 5000-bin histogram lerobot uses, so a dataset written
here and the same episodes recorded by lerobot carry the same numbers; pi0.5's
normaliser reads q01/q99 from meta/stats.json.

One departure: lerobot 0.4 squares uint8 pixels before averaging them, which wraps
and zeroes the image std; here pixels are squared as floats, so the std is the real one.

Aggregation (meta/stats.json) follows `aggregate_stats`: min of mins, max of maxes,
count-weighted means, pooled variance, and count-weighted averages of the episodes'
quantiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # lerobot's DEFAULT_QUANTILES
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)  # q01 q10 q50 q90 q99
HISTOGRAM_BINS = 5000  # lerobot's RunningQuantileStats default
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)

Stats = dict[str, np.ndarray]  # stat name -> array, e.g. "mean" -> (D,)


def _histogram_quantiles(values: np.ndarray) -> dict[str, np.ndarray]:
    """Quantiles of each column of (N, D) float64 `values`, read off a 5000-bin histogram."""
    low, high = values.min(axis=0), values.max(axis=0)
    out = {key: np.empty(values.shape[1]) for key in QUANTILE_KEYS}
    for d in range(values.shape[1]):
        edges = np.linspace(low[d] - 1e-10, high[d] + 1e-10, HISTOGRAM_BINS + 1)
        cumulative = np.cumsum(np.histogram(values[:, d], bins=edges)[0])
        for key, q in zip(QUANTILE_KEYS, QUANTILES, strict=True):
            target = q * len(values)
            i = int(np.searchsorted(cumulative, target))
            if i == 0 or i >= len(cumulative):
                out[key][d] = edges[0] if i == 0 else edges[-1]
                continue
            in_bin = cumulative[i] - cumulative[i - 1]
            fraction = (target - cumulative[i - 1]) / in_bin if in_bin else 0.0
            out[key][d] = edges[i] + fraction * (edges[i + 1] - edges[i])
    return out


def _column_stats(values: np.ndarray, count: int) -> Stats:
    """Stats over the rows of (N, D) `values`; min/max keep the column's dtype, as lerobot's do."""
    as_float = values.astype(np.float64)
    mean = as_float.mean(axis=0)
    stats: Stats = {"min": values.min(axis=0), "max": values.max(axis=0), "mean": mean}
    if len(values) < 2:  # lerobot: too few rows for a histogram, quantiles are the mean
        stats["std"] = as_float.std(axis=0)
        stats |= {key: mean.copy() for key in QUANTILE_KEYS}
    else:
        stats["std"] = np.sqrt(np.maximum(0.0, (as_float**2).mean(axis=0) - mean**2))
        stats |= _histogram_quantiles(as_float)
    stats["count"] = np.array([count])
    return stats


def feature_stats(values: np.ndarray) -> Stats:
    """Stats of one episode's (N,) or (N, D) feature; every entry but count is (1,) or (D,)."""
    values = np.asarray(values)
    return _column_stats(values.reshape(len(values), -1), len(values))


def sample_indices(length: int) -> list[int]:
    """The frames lerobot computes image stats over: all up to 100, then ~length^0.75 (max 10,000)."""
    samples = length if length < 100 else max(100, min(int(length**0.75), 10_000))
    return np.round(np.linspace(0, length - 1, samples)).astype(int).tolist()


def image_stats(frames: np.ndarray) -> Stats:
    """Per-channel stats of (F, H, W, 3) uint8 frames in [0, 1]; every entry but count is (3, 1, 1)."""
    sampled = frames[sample_indices(len(frames))]
    height, width = sampled.shape[1:3]
    if max(height, width) >= 300:  # lerobot's auto_downsample_height_width, target 150 px
        factor = int(width / 150) if width > height else int(height / 150)
        sampled = sampled[:, ::factor, ::factor]
    stats = _column_stats(sampled.reshape(-1, sampled.shape[-1]), len(sampled))
    return {key: value if key == "count" else (value / 255.0).reshape(-1, 1, 1) for key, value in stats.items()}


def aggregate_stats(episodes: Sequence[dict[str, Stats]]) -> dict[str, Stats]:
    """Dataset stats from per-episode stats (feature -> stats), as lerobot's `aggregate_stats`."""
    features = dict.fromkeys(key for stats in episodes for key in stats)
    return {key: _aggregate_feature([stats[key] for stats in episodes if key in stats]) for key in features}


def _aggregate_feature(parts: list[Stats]) -> Stats:
    means = np.stack([p["mean"] for p in parts])
    counts = np.stack([p["count"] for p in parts])  # (E, 1)
    total = counts.sum(axis=0)
    weights = counts.reshape(counts.shape + (1,) * (means.ndim - counts.ndim))  # broadcast over (E, ...)
    mean = (means * weights).sum(axis=0) / total
    variance = ((np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2) * weights).sum(axis=0) / total
    out: Stats = {
        "min": np.min(np.stack([p["min"] for p in parts]), axis=0),
        "max": np.max(np.stack([p["max"] for p in parts]), axis=0),
        "mean": mean,
        "std": np.sqrt(variance),
        "count": total,
    }
    for key in QUANTILE_KEYS:
        out[key] = (np.stack([p[key] for p in parts]) * weights).sum(axis=0) / total
    return out


def to_lists(stats: Stats) -> dict[str, list]:
    """Stats as nested lists (parquet / JSON), in lerobot's key order."""
    return {key: stats[key].tolist() for key in STAT_KEYS}
