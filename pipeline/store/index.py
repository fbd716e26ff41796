"""The episode index: one row per episode, stored as columnar Zarr arrays under /index.

Finding an episode never lists storage: a reader loads these few 1-D arrays (one object
per column chunk) and looks rows up in memory. At a million episodes that is a few tens
of MB, read once per open. The index is rewritten in the same commit as the data it
points to, so a version id pins both.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import zarr

from pipeline.store.format import checksummed
from schemas import INDEX_SCHEMA

INDEX_GROUP = "index"
_CHUNK_ROWS = 65536


def _to_numpy(col: pa.ChunkedArray, field: pa.Field) -> np.ndarray:
    if pa.types.is_string(field.type):
        return np.array([("" if v is None else v) for v in col.to_pylist()], dtype=object)
    if pa.types.is_timestamp(field.type):
        return col.cast(pa.int64()).fill_null(0).to_numpy()
    if pa.types.is_floating(field.type):
        return col.fill_null(np.nan).to_numpy()
    return col.fill_null(0).to_numpy()


def write_index(root: zarr.Group, table: pa.Table, schema: pa.Schema = INDEX_SCHEMA, name: str = INDEX_GROUP) -> None:
    """Replace root/name with `table` (INDEX_SCHEMA by default). Empty strings stand for nulls."""
    table = table.select(schema.names).cast(schema)
    if name in root:
        del root[name]
    group = root.create_group(name)
    group.attrs["rows"] = table.num_rows
    n = table.num_rows
    for field in schema:
        values = _to_numpy(table.column(field.name), field)
        dtype = str if pa.types.is_string(field.type) else values.dtype
        arr = group.create_array(field.name, shape=(n,), chunks=(max(1, min(n, _CHUNK_ROWS)),), dtype=dtype,
                                 compressors=checksummed(), dimension_names=("row",))
        if n:
            arr[:] = values


def read_index(root: zarr.Group, schema: pa.Schema = INDEX_SCHEMA, name: str = INDEX_GROUP) -> pa.Table:
    if name not in root:
        return schema.empty_table()
    group = root[name]
    columns = []
    for field in schema:
        if field.name not in group:  # a column added after this store was written
            columns.append(pa.nulls(int(group.attrs.get("rows", 0)), field.type))
            continue
        values = group[field.name][:]
        if pa.types.is_string(field.type):
            arr = pa.array([None if (v == "" and field.nullable) else str(v) for v in values], pa.string())
        elif pa.types.is_timestamp(field.type):
            arr = pa.array(values.astype(np.int64)).cast(field.type)
        else:
            arr = pa.array(values, type=field.type)
        columns.append(arr)
    return pa.Table.from_arrays(columns, schema=schema)
