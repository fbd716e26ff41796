"""The versioned feature store: Icechunk (transactional Zarr v3) underneath.

`FeatureStore` reads one pinned version; `StoreWriter` is the only way to write.
"""

from pipeline.store.backend import StoreBusyError, StoreError
from pipeline.store.reader import Episode, FeatureStore, PairBatch, VersionInfo
from pipeline.store.writer import Plan, StoreMismatchError, StoreWriter, ingest_hash

__all__ = [
    "Episode",
    "FeatureStore",
    "PairBatch",
    "Plan",
    "StoreBusyError",
    "StoreError",
    "StoreMismatchError",
    "StoreWriter",
    "VersionInfo",
    "ingest_hash",
]
