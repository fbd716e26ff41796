"""The one dataset layer every trainer reads the store through: torch over `PairReader`.

    ds = PairDataset(FeatureStore.open(uri, version), PairQuery(k_seconds=0.5), batch_size=256)
    loader = pair_loader(ds, workers=2)     # yields dicts of tensors, already batched

The dataset is an `IterableDataset` that yields whole batches (`DataLoader(batch_size=None)`):
collating pairs one by one costs more than reading them. Each DataLoader worker of each
Ray Train rank is one shard of the epoch (`PairReader.windows`), so together they read every
pair once per epoch; the store handle pickles as `(uri, version)` and reopens in each worker,
mapping the episode table `pair_loader` shared instead of reading the index again.

Resuming: `start_batch` is how many batches this rank's loader already yielded. The plan is
computed from the index, so each worker skips its share of those batches without reading
them, and the stream continues exactly where the interrupted run stopped (for the same
`workers`, batch size and store version).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.store import FeatureStore
from pipeline.store.pairs import PairQuery, PairReader

log = logging.getLogger(__name__)

_STRINGS = ("episode", "source", "instruction")


def rank_and_world() -> tuple[int, int]:
    """This process's data-parallel rank: torch.distributed when initialised (Ray Train's
    TorchTrainer initialises it), else a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor | list[str]]:
    """Numeric arrays become tensors (sharing memory); episode keys, sources and
    instructions stay lists of str."""
    return {k: (v.tolist() if k in _STRINGS else torch.from_numpy(v)) for k, v in batch.items()}


class PairDataset(IterableDataset):
    """Batches of pairs of one store version. `epochs=None` streams epoch after epoch."""

    def __init__(self, store: FeatureStore, query: PairQuery, batch_size: int, *, epochs: int | None = None,
                 start_batch: int = 0, rank: int | None = None, world: int | None = None, window_pairs: int = 8192):
        self.store, self.query, self.batch_size = store, query, batch_size
        self.epochs, self.start_batch, self.window_pairs = epochs, start_batch, window_pairs
        self._rank, self._world = rank, world
        self._reader: PairReader | None = None

    @property
    def reader(self) -> PairReader:
        """Built lazily, so the main process of a multi-worker loader does no reading."""
        if self._reader is None:
            self._reader = PairReader(self.store, self.query)
        return self._reader

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None}  # each worker builds its own from the store's (uri, version)

    def _shard(self) -> tuple[int, int, int, int]:
        """(shard, num_shards, worker, workers) of this process and DataLoader worker."""
        rank, world = rank_and_world() if self._rank is None else (self._rank, self._world or 1)
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return rank * workers + worker, world * workers, worker, workers

    def __iter__(self) -> Iterator[dict]:
        shard, num_shards, worker, workers = self._shard()
        # The DataLoader takes batches from its workers in turn: global batch i came from
        # worker i % workers, so this worker already yielded ceil((start - worker) / workers).
        skip = max(0, -(-(self.start_batch - worker) // workers))
        reader = self.reader
        it = reader.batch_indices(self.batch_size, epochs=self.epochs, shard=shard, num_shards=num_shards,
                                  window_pairs=self.window_pairs)
        for i, (epoch, eps, t) in enumerate(it):
            if i < skip:
                continue
            batch = reader.read(eps, t)
            batch["epoch"] = np.full(len(t), epoch, np.int64)
            yield to_torch(batch)


def keeps_actions(keys: Sequence[str], fraction: float) -> np.ndarray:
    """Which episodes keep their actions under an action fraction (`lawam distill
    --action-fraction`, the LaWM's `action_fraction`): by a hash of the key, so the same
    episodes keep them in every run, every trainer and every store version."""
    if fraction >= 1:
        return np.ones(len(keys), bool)
    h = np.array([int.from_bytes(hashlib.sha256(("actions:" + k).encode()).digest()[:8], "big") for k in keys],
                 dtype=np.float64)
    return h / 2**64 < fraction


def pair_loader(ds: PairDataset, workers: int = 0, prefetch: int = 2) -> DataLoader:
    """A DataLoader over already-batched pairs; `workers` processes read in parallel.

    Workers start by forkserver, never by fork: a forked copy of a process that has used the
    store inherits Icechunk's I/O runtime without its threads and hangs on its first read.
    They map one copy of the store version's episode table (`FeatureStore.share`), written
    here, instead of each reading and decoding the index: at a million episodes that is one
    read instead of one per worker, and one copy in memory (the page cache) instead of N."""
    kw = ({"prefetch_factor": prefetch, "persistent_workers": True, "multiprocessing_context": "forkserver"}
          if workers else {})
    if workers:
        ds.store.share()
    # Its own generator: iterating a DataLoader draws a base seed, and drawing it from the global
    # RNG would shift the trainer's noise after a resume (the order of pairs comes from the plan).
    return DataLoader(ds, batch_size=None, num_workers=workers, generator=torch.Generator().manual_seed(0), **kw)


def collect(store: FeatureStore, query: PairQuery, max_pairs: int | None = None, batch_size: int = 4096,
            seed: int = 0) -> dict[str, np.ndarray]:
    """Every pair of a selection (or `max_pairs` of them, whole windows in a fixed order) as
    one numpy dict: held-out evaluation and probes."""
    reader = PairReader(store, query)
    if len(reader) == 0:
        return {}
    parts = []
    n = 0
    for _, eps, t in reader.batch_indices(batch_size, epoch=seed, epochs=1):
        parts.append(reader.read(eps, t))
        n += len(t)
        if max_pairs is not None and n >= max_pairs:
            break
    if not parts:
        return {}
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return {k: v[:max_pairs] for k, v in out.items()} if max_pairs is not None else out
