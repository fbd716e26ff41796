"""`catalog.parquet` beside the store: the newest commit's catalog, for pyarrow / DuckDB.

It is a convenience copy written after each commit; the index inside the commit is the
source of truth (`FeatureStore.open(uri, version).catalog()` reads any version).
"""

from __future__ import annotations

import os

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.uri import is_remote, join_uri, local_path
from schemas import CATALOG_SCHEMA


def write_catalog_file(uri: str, index: pa.Table) -> str:
    path = join_uri(uri, "catalog.parquet")
    table = index.select(CATALOG_SCHEMA.names)
    if not is_remote(uri):
        tmp = local_path(path) + ".tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, local_path(path))  # readers see the old file or the new one
    else:
        with fsspec.open(path, "wb") as f:  # object-store PUTs are atomic
            pq.write_table(table, f)
    return path
