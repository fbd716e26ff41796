"""The versioned feature store: Icechunk (transactional Zarr v3) underneath.

`FeatureStore` reads one pinned version; `StoreWriter` is the only way to write episodes and
`LabelWriter` the only way to add a label set (`LabelSet.open(store, set_id)` reads one).
"""

from pipeline.store.backend import StoreBusyError, StoreError
from pipeline.store.labels import LabelSet, LabelSetInfo, LabelWriter, list_label_sets
from pipeline.store.plan import Plan, ingest_hash
from pipeline.store.reader import Episode, FeatureStore, StoreCorruptError, VersionInfo
from pipeline.store.writer import StoreWriter
from schemas.errors import StoreMismatchError
from schemas.identity import label_set_id

__all__ = [
    "Episode",
    "FeatureStore",
    "LabelSet",
    "LabelSetInfo",
    "LabelWriter",
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
