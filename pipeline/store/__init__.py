"""The versioned feature store: Icechunk (transactional Zarr v3) underneath.

`FeatureStore` reads one pinned version; `StoreWriter` is the only way to write episodes and
`LabelWriter` the only way to add a label set (`LabelSet.open(store, set_id)` reads one).
"""

from pipeline.store.backend import StoreBusyError, StoreError
from pipeline.store.labels import LabelSet, LabelSetInfo, LabelWriter, label_set_id, list_label_sets
from pipeline.store.reader import Episode, FeatureStore, PairBatch, StoreCorruptError, VersionInfo
from pipeline.store.writer import Plan, StoreMismatchError, StoreWriter, ingest_hash

__all__ = [
    "Episode",
    "FeatureStore",
    "LabelSet",
    "LabelSetInfo",
    "LabelWriter",
    "PairBatch",
    "Plan",
    "StoreBusyError",
    "StoreCorruptError",
    "StoreError",
    "StoreMismatchError",
    "StoreWriter",
    "VersionInfo",
    "ingest_hash",
    "label_set_id",
    "list_label_sets",
]
