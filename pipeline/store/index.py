"""The episode index: one row per episode, stored as columnar Zarr arrays under /index.

Finding an episode never lists storage: a reader loads these few 1-D arrays (one object
per column chunk) and looks rows up in memory. At a million episodes that is a few tens
of MB, read once per open. The index is rewritten in the same commit as the data it
points to, so a version id pins both.

Beside it, `/files` remembers the source files the ingest hashed (FILES_SCHEMA: stat
identity, digest, when hashed), written in the same commit; `committed_files` reads it
back before a refresh enumerates its sources, so unchanged files are not read again.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import zarr

from pipeline.store.format import checksummed
from schemas import INDEX_SCHEMA
from schemas.tables import FILES_SCHEMA

INDEX_GROUP = "index"
FILES_GROUP = "files"
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
        elif pa.types.is_timestamp(field.type):  # 0 is how a null was written
            ints = values.astype(np.int64)
            arr = pa.array(ints, mask=(ints == 0) if field.nullable else None).cast(field.type)
        else:
            arr = pa.array(values, type=field.type)
        columns.append(arr)
    return pa.Table.from_arrays(columns, schema=schema)


def read_files(root: zarr.Group) -> pa.Table:
    """The store's `files` table (FILES_SCHEMA); empty for stores written before it existed."""
    return read_index(root, FILES_SCHEMA, FILES_GROUP)


def committed_files(uri: str, branch: str = "main") -> pa.Table:
    """The `files` table of the branch's newest commit, read without taking the writer lock;
    empty when there is no store (or branch) yet. A hint only: what it says about a file is
    trusted only while the file's stat identity is unchanged."""
    root = _committed_root(uri, branch)
    return FILES_SCHEMA.empty_table() if root is None else read_files(root)


def committed_attrs(uri: str, branch: str = "main") -> dict:
    """The root attributes (encoder identity, layout, token shape) of the branch's newest
    commit, without reading the index; {} when there is no store (or branch) yet."""
    root = _committed_root(uri, branch)
    return {} if root is None else dict(root.attrs)


def _committed_root(uri: str, branch: str) -> zarr.Group | None:
    from pipeline.store.backend import StoreError, open_repo

    try:
        repo = open_repo(uri, create=False)
    except StoreError:
        return None
    if branch not in repo.list_branches():
        return None
    try:
        return zarr.open_group(repo.readonly_session(branch=branch).store, mode="r")
    except zarr.errors.GroupNotFoundError:  # a repository with no commit of ours yet
        return None
