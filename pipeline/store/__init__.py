"""The versioned feature store: Icechunk (transactional Zarr v3) underneath.

`FeatureStore` reads one pinned version; `StoreWriter` is the only way to write episodes,
`LabelWriter` the only way to add a label set (`LabelSet.open(store, set_id)` reads one) and
`CurationWriter` a curation set (`CurationSet.open(store, set_id)`; `pipeline.curation` makes them).
"""

from pipeline.store.backend import StoreBusyError, StoreError
from pipeline.store.curation import CurationSet, CurationWriter, list_curation_sets
from pipeline.store.labels import LabelSet, LabelSetInfo, LabelWriter, list_label_sets
from pipeline.store.plan import Plan, ingest_hash
from pipeline.store.reader import Episode, FeatureStore, StoreCorruptError, VersionInfo
from pipeline.store.writer import StoreWriter
from schemas.errors import StoreMismatchError
from schemas.identity import label_set_id

__all__ = [
    "CurationSet",
    "CurationWriter",
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
    "list_curation_sets",
    "list_label_sets",
]
