"""Near-duplicate episodes: a nearest-neighbour search over episode embeddings, and groups.

The search is faiss's (`faiss-cpu`, Meta's library, on PyPI with wheels for every platform we
run on): new episodes are compared with every current episode, old and new alike, so a refresh
costs what it adds — `n_new x N` comparisons, not `N x N`.

- While `n_new x N` is under `exact_pairs`, exactly: a flat inner-product index and a range
  search (every pair at or above the threshold), in BLAS blocks. At a million episodes a
  refresh of a thousand new ones is 10^9 dot products: seconds.
- Past that (the first curation of a large store), approximately: an HNSW graph over all
  embeddings, `neighbours` nearest per new episode, those at or above the threshold kept.
  Groups join through chains of neighbours, so a group larger than `neighbours` is still found
  whole as long as each member is among its near neighbours' nearest.

Groups are the connected components of "at or above the threshold". The member a group keeps
is its earliest-curated one (lowest `seq`): an episode once kept stays kept while copies of it
arrive later.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def _faiss():
    try:
        import faiss
    except ModuleNotFoundError as e:  # a core dependency; this only says how to repair an install
        raise ModuleNotFoundError("duplicate search needs faiss: pip install faiss-cpu") from e
    return faiss


def similar_pairs(queries: np.ndarray, base: np.ndarray, threshold: float, *, neighbours: int = 32,
                  exact_pairs: int = 2_000_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) for every query i and base row j with cosine >= threshold (rows are unit
    vectors), exactly or through HNSW (see the module docstring). A query row that is also in
    `base` finds itself: callers drop those pairs."""
    faiss = _faiss()
    q = np.ascontiguousarray(queries, np.float32)
    b = np.ascontiguousarray(base, np.float32)
    if not len(q) or not len(b):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    dim = b.shape[1]
    if len(q) * len(b) <= exact_pairs:
        index = faiss.IndexFlatIP(dim)
        index.add(b)
        lims, sims, ids = index.range_search(q, float(threshold) - 1e-6)
        i = np.repeat(np.arange(len(q)), np.diff(lims.astype(np.int64)))
        return i.astype(np.int64), ids.astype(np.int64), sims.astype(np.float32)
    log.info("duplicates: %d x %d comparisons, approximate search (HNSW, %d neighbours)", len(q), len(b), neighbours)
    index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    index.add(b)
    k = min(neighbours + 1, len(b))
    index.hnsw.efSearch = max(64, 2 * k)
    sims, ids = index.search(q, k)
    keep = (ids >= 0) & (sims >= threshold - 1e-6)
    i = np.broadcast_to(np.arange(len(q))[:, None], ids.shape)[keep]
    return i.astype(np.int64), ids[keep].astype(np.int64), sims[keep].astype(np.float32)


class Groups:
    """Union-find over episode numbers 0..n-1, remembering each one's best similarity."""

    def __init__(self, n: int):
        self.parent = np.arange(n)
        self.best = np.full(n, np.nan, np.float32)

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int, sim: float | None = None) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
        if sim is not None:
            for x in (a, b):
                if not sim <= self.best[x]:  # NaN (none yet) or a better one
                    self.best[x] = sim

    def components(self, members: np.ndarray) -> dict[int, list[int]]:
        """root -> members, for the given episode numbers."""
        out: dict[int, list[int]] = {}
        for x in members.tolist():
            out.setdefault(self.find(x), []).append(x)
        return out
