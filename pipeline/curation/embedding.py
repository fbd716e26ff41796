"""One vector per episode, for the duplicate search: pooled standardised features.

    embedder = Embedder(mean, std, cfg.duplicates)    # mean/std: feature_centre(store), kept in the set
    e = embedder(features)                           # (E,) float32, unit length

1. standardise each frame's features per token and channel with the set's centre (fixed when
   the set is made): the common look of every frame (the same lab, the same camera) is
   removed, so cosine measures what differs between episodes;
2. average the frames of each of `segments` equal stretches of the episode's duration: the
   embedding holds the episode's course in time, so two episodes of one scene that move
   differently are apart, while a copy (re-encoded, rescaled, moved by a few pixels) follows
   the same course;
3. project to `dim` numbers by a fixed Gaussian matrix (seeded: the same in every run and
   process; Johnson–Lindenstrauss keeps cosines) and scale to unit length. A million episodes
   at dim 256 are 1 GB of float32 in the search, 0.5 GB stored as float16.
"""

from __future__ import annotations

import numpy as np

from pipeline.store import FeatureStore
from schemas.curation import DuplicatesConfig


def feature_centre(store: FeatureStore, max_frames: int = 50_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each (T, D) float32, of the store's features over whole episodes taken in
    random order until `max_frames` frames are seen (std floored at 1e-3 of its median)."""
    rng = np.random.default_rng(seed)
    s1 = s2 = 0.0
    count = 0
    for r in rng.permutation(len(store)):
        f = store.features(int(r)).astype(np.float64)
        f = f.reshape(len(f), -1, f.shape[-1])
        s1, s2 = s1 + f.sum(0), s2 + (f * f).sum(0)
        count += len(f)
        if count >= max_frames:
            break
    if not count:
        raise ValueError("no frames in the store to standardise features with")
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    std = np.maximum(std, 1e-3 * max(float(np.median(std)), 1e-12))
    return mean.astype(np.float32), std.astype(np.float32)


class Embedder:
    """Episode features (N, T, D) -> unit-length (dim,) float32 embedding (see the module docstring)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, cfg: DuplicatesConfig):
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.segments, self.dim = cfg.segments, cfg.dim
        size = self.segments * int(np.prod(self.mean.shape))
        rng = np.random.default_rng([cfg.seed, size, cfg.dim])
        self.projection = (rng.standard_normal((size, cfg.dim), dtype=np.float32) / np.sqrt(cfg.dim))

    def pooled(self, features: np.ndarray) -> np.ndarray:
        """(segments, T, D): standardised features averaged over equal stretches of the episode."""
        f = np.asarray(features, np.float32).reshape(len(features), *self.mean.shape)
        x = (f - self.mean) / self.std
        n = len(x)
        which = np.minimum((np.arange(n) * self.segments) // max(n, 1), self.segments - 1)
        out = np.empty((self.segments, *self.mean.shape), np.float32)
        for s in range(self.segments):
            part = x[which == s]
            # an episode shorter than `segments` frames repeats its nearest frame
            out[s] = part.mean(0) if len(part) else x[min(n - 1, (s * n) // self.segments)]
        return out

    def __call__(self, features: np.ndarray) -> np.ndarray:
        v = self.pooled(features).reshape(-1) @ self.projection
        return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)
