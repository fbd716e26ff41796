"""`catalog.parquet` beside the store: the newest commit's catalog, for pyarrow / DuckDB.

It is a convenience copy; the index inside each commit is the source of truth
(`FeatureStore.open(uri, version).catalog()` reads any version). The file records, in its
Parquet schema metadata (`lawam.version`), the commit it describes: writers rewrite it after
each commit, and any writer (a no-op `lawam ingest` included) rewrites it when it describes
another commit than the branch tip (a run killed between its commit and this copy).
"""

from __future__ import annotations

import os

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.uri import is_remote, join_uri, local_path
from schemas import CATALOG_SCHEMA

VERSION_KEY = b"lawam.version"


def catalog_table(index: pa.Table) -> pa.Table:
    """The catalog (CATALOG_SCHEMA) of an index table: its columns plus the derived ones
    (`fps` = frames / duration_s, null where nothing was kept)."""
    if "fps" not in index.column_names:
        frames = index["frames"].to_numpy(zero_copy_only=False).astype(np.float64)
        dur = index["duration_s"].to_numpy(zero_copy_only=False)
        fps = np.divide(frames, dur, out=np.zeros(len(dur)), where=dur > 0)
        index = index.append_column("fps", pa.array(fps, pa.float64(), mask=~(dur > 0)))
    for field in CATALOG_SCHEMA:  # a column this index predates: all nulls
        if field.name not in index.column_names:
            index = index.append_column(field.name, pa.nulls(index.num_rows, field.type))
    return index.select(CATALOG_SCHEMA.names).cast(CATALOG_SCHEMA)


def write_catalog_file(uri: str, index: pa.Table, version: str | None = None) -> str:
    """Write the catalog of `index` (the index of commit `version`) to URI/catalog.parquet."""
    path = join_uri(uri, "catalog.parquet")
    table = catalog_table(index)
    if version is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), VERSION_KEY: version.encode()})
    if not is_remote(uri):
        tmp = local_path(path) + ".tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, local_path(path))  # readers see the old file or the new one
    else:
        with fsspec.open(path, "wb") as f:  # object-store PUTs are atomic
            pq.write_table(table, f)
    return path


def catalog_file_version(uri: str) -> str | None:
    """The commit URI/catalog.parquet describes; None when it is missing, unreadable or predates
    the version stamp."""
    path = join_uri(uri, "catalog.parquet")
    try:
        with fsspec.open(path, "rb") as f:
            meta = pq.read_schema(f).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    v = meta.get(VERSION_KEY)
    return v.decode() if v else None


def sync_catalog_file(uri: str, index: pa.Table, version: str) -> bool:
    """Rewrite URI/catalog.parquet from `index` unless it already describes `version`; True if
    it was rewritten. Call with the writer lock held and `version` the branch tip."""
    if catalog_file_version(uri) == version:
        return False
    write_catalog_file(uri, index, version)
    return True


def fill_store_version(index: pa.Table, version: str | None) -> pa.Table:
    """`index` with empty `store_version` cells (the rows the commit itself added) set to
    `version`, the commit that added them."""
    if version is None:
        return index
    sv = index.column("store_version")
    return index.set_column(index.schema.get_field_index("store_version"), "store_version",
                            pc.if_else(pc.is_null(sv), pa.scalar(version), sv))
