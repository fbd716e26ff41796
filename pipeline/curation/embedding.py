"""One vector per episode, for the duplicate search: the course of its features in time.

    embedder = Embedder(mean, std, cfg.duplicates)    # mean/std: feature_centre(store), kept in the set
    e = embedder(features)                           # (E,) float32, unit length

1. standardise every channel with the set's centre (fixed when the set is made), so no channel
   outweighs the others by its scale alone;
2. subtract the episode's own mean frame: what stays is how the picture *moves*. Episodes of
   one task in one scene look alike frame by frame (measured on the samples: another layout of
   the same task is as close in features as a re-encoded copy), but each moves its own way,
   while a copy follows its original's course;
3. average the frames of each of `segments` equal stretches of the episode's duration, each
   stretch scaled to unit length (a long still stretch does not drown the rest);
4. project to `dim` numbers by a fixed Gaussian matrix (seeded: the same in every run and
   process; Johnson–Lindenstrauss keeps cosines) and scale to unit length. A million episodes
   at dim 256 are 1 GB of float32 in the search, 0.5 GB stored as float16.

An episode that never moves has no course: its embedding is zero, in no group (its frames are
dropped as static anyway).
"""

from __future__ import annotations

import numpy as np

from pipeline.store import FeatureStore
from schemas.curation import DuplicatesConfig


def feature_centre(store: FeatureStore, max_frames: int = 50_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each (D,) float32, per channel over tokens and frames of whole episodes
    taken in random order until `max_frames` frames are seen (std floored at 1e-3 of its median)."""
    rng = np.random.default_rng(seed)
    s1 = s2 = 0.0
    count = 0
    for r in rng.permutation(len(store)):
        f = store.features(int(r)).astype(np.float64)
        f = f.reshape(-1, f.shape[-1])  # frames x tokens, D
        s1, s2 = s1 + f.sum(0), s2 + (f * f).sum(0)
        count += len(f)
        if count >= max_frames * max(1, int(np.prod(store.token_shape[:-1]))):
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
        self.segments, self.dim, self.seed = cfg.segments, cfg.dim, cfg.seed
        self._projection: np.ndarray | None = None

    def projection(self, size: int) -> np.ndarray:
        """(size, dim) fixed Gaussian matrix, made on first use from the seed."""
        if self._projection is None or len(self._projection) != size:
            rng = np.random.default_rng([self.seed, size, self.dim])
            self._projection = rng.standard_normal((size, self.dim), dtype=np.float32) / np.float32(np.sqrt(self.dim))
        return self._projection

    def course(self, features: np.ndarray) -> np.ndarray:
        """(segments, T, D): steps 1-3 of the module docstring."""
        f = np.asarray(features, np.float32)
        x = (f.reshape(len(f), -1, f.shape[-1]) - self.mean) / self.std  # (N, T, D)
        x = x - x.mean(0)
        n = len(x)
        which = np.minimum((np.arange(n) * self.segments) // max(n, 1), self.segments - 1)
        out = np.empty((self.segments, *x.shape[1:]), np.float32)
        for s in range(self.segments):
            part = x[which == s]
            # an episode shorter than `segments` frames repeats its nearest frame
            seg = part.mean(0) if len(part) else x[min(n - 1, (s * n) // self.segments)]
            out[s] = seg / max(float(np.linalg.norm(seg)), 1e-6)
        return out

    def __call__(self, features: np.ndarray) -> np.ndarray:
        c = self.course(features).reshape(-1)
        v = c @ self.projection(len(c))
        norm = float(np.linalg.norm(v))
        return (v / norm if norm > 1e-6 else np.zeros_like(v)).astype(np.float32)
