"""Append-only columnar tables in a Zarr group: how the episode index, the files table and each
label set's index are stored (a curation set's index can be one too).

Promise: a commit costs what it adds and a reader pays for what it reads. A commit appends its
rows to every column — only each column's last, partial chunk is rewritten — and lists the rows
it replaces in `superseded`; nothing stored before is rewritten, so the tenth commit into a
million-row table costs what the first did. A reader loads only the columns it asks for,
numbers as numpy and strings as Arrow arrays built straight from the stored bytes: no Python
object per row, a few bytes per row and column, a million rows in a fraction of a second.

Layout (docs/store-format.md, "Tables"):

    <table>/                      attrs: rows (stored rows), table_layout
    <table>/columns/<name>        (row,) a number or timestamp column
    <table>/columns/<name>/offsets  int64 (row + 1,)  a string column in Arrow's layout:
    <table>/columns/<name>/data     uint8 (byte,)     row i is data[offsets[i]:offsets[i + 1]]
    <table>/superseded            int64 (n,)  rows no longer live, in the order they were dropped

Every row not listed in `superseded` is live. A keyed table (the index by episode key, files by
uri, a label set by episode key) holds at most one live row per key: whoever appends a key's
new row lists its old one ("the newest row of a key wins", settled at write time, so readers
need no de-duplication). Tables keyed by episode store `key_hash` (`key_hash(key)`, 8 bytes) so
they join and look keys up as numbers. Nulls are stored as "" (strings), 0 (timestamps) and NaN
(floats).

Tables of layout-1 stores (each column one variable-length-string or number array, rewritten
whole by every commit) are read by `read_legacy`; `pipeline.store.migrate` rewrites them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa
import zarr

from pipeline.store.format import checksummed

TABLE_LAYOUT = 2
COLUMNS = "columns"
SUPERSEDED = "superseded"
_CHUNK_ROWS = 65536
_CHUNK_BYTES = 1 << 20


def key_hash(key: str) -> int:
    """The 64-bit hash of an episode key stored as `key_hash`: the first 8 bytes of its sha256."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def key_hashes(keys: Iterable[str]) -> np.ndarray:
    return np.fromiter((key_hash(k) for k in keys), np.uint64)


def is_legacy(group: zarr.Group) -> bool:
    """A layout-1 table: its columns directly in the group, each rewritten whole per commit."""
    return COLUMNS not in group and any(True for _ in group.array_keys())


class Table:
    """One committed state of a table, read-only. Columns are read on demand: `column(name)`
    for every stored row, `take(name, rows)` for some; `live` says which rows count."""

    def __init__(self, group: zarr.Group | None, schema: pa.Schema, legacy_schema: pa.Schema | None = None,
                 legacy_keys: Callable[[pa.Table], pa.Array] | None = None):
        self.group, self.schema = group, schema
        self.rows = int(group.attrs.get("rows", 0)) if group is not None else 0
        self._superseded: np.ndarray | None = None
        self._listing: dict | None = None
        # A layout-1 table is read whole, once, in its own schema (`legacy_schema`, default
        # `schema`); `legacy_keys` gives its rows' keys, to derive the `key_hash` it lacks.
        self.legacy: pa.Table | None = None
        if group is not None and is_legacy(group):
            self.legacy = read_legacy(group, legacy_schema or schema)
            self.rows = self.legacy.num_rows
            if legacy_keys is not None and "key_hash" not in self.legacy.column_names:
                hashes = key_hashes(legacy_keys(self.legacy).to_pylist())
                self.legacy = self.legacy.append_column("key_hash", pa.array(hashes, pa.uint64()))

    @property
    def superseded(self) -> np.ndarray:
        """Stored rows that are no longer live."""
        if self._superseded is None:
            g = self.group
            arr = self._nodes().get(SUPERSEDED) if g is not None and self.legacy is None else None
            self._superseded = arr[:].astype(np.int64) if arr is not None else np.zeros(0, np.int64)
        return self._superseded

    def live_mask(self) -> np.ndarray:
        """(rows,) bool: which stored rows are live."""
        mask = np.ones(self.rows, bool)
        mask[self.superseded] = False
        return mask

    def live(self) -> np.ndarray:
        """Stored row numbers of the live rows, ascending."""
        if not len(self.superseded):
            return np.arange(self.rows, dtype=np.int64)
        return np.flatnonzero(self.live_mask())

    def column(self, name: str, lo: int = 0, hi: int | None = None) -> pa.Array:
        """Stored rows [lo, hi) of column `name`, typed as the schema says."""
        hi = self.rows if hi is None else hi
        field = self.schema.field(name)
        if self.legacy is not None:
            if name not in self.legacy.column_names:
                return pa.nulls(hi - lo, field.type) if field.nullable else _zeros(field, hi - lo)
            return self.legacy.column(name).slice(lo, hi - lo).combine_chunks()
        nodes = self._nodes() if hi > lo else {}
        path = f"{COLUMNS}/{name}"
        if path not in nodes:  # an empty table, or a column added after these rows were written
            return pa.nulls(max(0, hi - lo), field.type) if field.nullable or hi <= lo else _zeros(field, hi - lo)
        if f"{path}/offsets" in nodes:  # a string column
            offsets = nodes[f"{path}/offsets"][lo : hi + 1].astype(np.int64)
            a, b = int(offsets[0]), int(offsets[-1])
            data = nodes[f"{path}/data"][a:b] if b > a else np.zeros(0, np.uint8)
            return _strings(offsets - offsets[0], data, field)
        return _numbers(nodes[path][lo:hi], field)

    def _nodes(self) -> dict:
        """Every array and group of the table by path, listed once (one call, not one per column)."""
        if self._listing is None:
            self._listing = dict(self.group.members(max_depth=None)) if self.group is not None else {}
        return self._listing

    def take(self, name: str, rows: np.ndarray) -> pa.Array:
        """Column `name` at stored rows `rows`: reads the stored rows from the first to the last
        of them (the few newest rows cost what they hold; rows all over the table read it
        whole), and every row in order, as `live()` gives when nothing was superseded, is the
        column itself."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return self.column(name, 0, 0)
        if len(rows) == self.rows and rows[0] == 0 and bool((np.diff(rows) == 1).all()):
            return self.column(name)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        return self.column(name, lo, hi).take(pa.array(rows - lo, pa.int64()))

    def read(self, columns: list[str] | None = None, rows: np.ndarray | None = None) -> pa.Table:
        """The live rows (or stored rows `rows`) of `columns` (default: all) as one Arrow table."""
        rows = self.live() if rows is None else rows
        names = columns or self.schema.names
        fields = [self.schema.field(n) for n in names]
        return pa.Table.from_arrays([self.take(n, rows) for n in names], schema=pa.schema(fields))


def _zeros(field: pa.Field, n: int) -> pa.Array:
    if pa.types.is_string(field.type):
        return pa.array([""] * n, field.type)
    return pa.array(np.zeros(n, field.type.to_pandas_dtype()), field.type)


def _strings(offsets: np.ndarray, data: np.ndarray, field: pa.Field) -> pa.Array:
    """Arrow strings from stored (offsets, bytes), no copy of the bytes; "" is null where nullable."""
    n = len(offsets) - 1
    validity = None
    if field.nullable and n:
        valid = np.diff(offsets) > 0
        if not valid.all():
            validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data)),
                                           validity)
    return arr.cast(field.type) if field.type != pa.large_string() else arr


def _numbers(values: np.ndarray, field: pa.Field) -> pa.Array:
    if pa.types.is_timestamp(field.type):  # 0 is how a null was written
        ints = values.astype(np.int64)
        return pa.array(ints, mask=(ints == 0) if field.nullable else None).cast(field.type)
    return pa.array(values, type=field.type)


# -- writing -------------------------------------------------------------------------------
def _encode(col: pa.ChunkedArray | pa.Array, field: pa.Field) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """A column as what is stored: numbers as numpy, strings as (offsets relative to 0, bytes)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], field.type)
    if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
        arr = col.cast(pa.large_string()).fill_null("")
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset : arr.offset + len(arr) + 1]
        data = arr.buffers()[2]
        data = np.frombuffer(data, np.uint8)[offsets[0] : offsets[-1]] if data is not None else np.zeros(0, np.uint8)
        return offsets - offsets[0], data
    if pa.types.is_timestamp(field.type):
        return col.cast(pa.int64()).fill_null(0).to_numpy()
    if pa.types.is_floating(field.type):
        return col.fill_null(np.nan).to_numpy()
    return col.fill_null(0).to_numpy()


class _Appender:
    """Appends to the arrays of one table, listing them once: a commit makes two Zarr calls per
    array (resize, write), whatever the table holds."""

    def __init__(self, group: zarr.Group):
        self.group = group
        self.nodes = dict(group.members(max_depth=None))  # "columns/source/offsets" -> array, ...

    def rows(self, field: pa.Field) -> int:
        """Rows column `field` holds."""
        if pa.types.is_string(field.type):
            offsets = self.nodes.get(f"{COLUMNS}/{field.name}/offsets")
            return offsets.shape[0] - 1 if offsets is not None else 0
        arr = self.nodes.get(f"{COLUMNS}/{field.name}")
        return arr.shape[0] if arr is not None else 0

    def append(self, path: str, values: np.ndarray, chunk: int, dims: tuple[str, ...]) -> int:
        """Append `values` to the 1-D array at `path` (created holding them on first use);
        returns its old length."""
        arr = self.nodes.get(path)
        if arr is None:
            parent, _, name = path.rpartition("/")
            where = self.group.require_group(parent) if parent else self.group
            self.nodes[path] = where.create_array(name, data=values, chunks=(chunk,), compressors=checksummed(),
                                                  dimension_names=dims)
            return 0
        start = arr.shape[0]
        if len(values):
            arr.resize((start + len(values),))
            arr[start:] = values
        return start

    def column(self, field: pa.Field, values: np.ndarray | tuple[np.ndarray, np.ndarray]) -> None:
        path = f"{COLUMNS}/{field.name}"
        if isinstance(values, tuple):  # a string column: its bytes, then where each row ends
            offsets, data = values
            base = self.append(f"{path}/data", data, _CHUNK_BYTES, ("byte",))
            edges = offsets if f"{path}/offsets" not in self.nodes else offsets[1:]  # a new column starts at 0
            self.append(f"{path}/offsets", edges + base, _CHUNK_ROWS, ("row_edge",))
        else:
            self.append(path, values, _CHUNK_ROWS, ("row",))


def append(group: zarr.Group, schema: pa.Schema, rows: pa.Table, superseded: np.ndarray | None = None) -> int:
    """Append `rows` (the schema's columns) to the table in `group` and mark the stored rows
    `superseded` as no longer live; returns the stored number of the first new row. Touches
    only each column's last chunk: the cost is the new rows', whatever the table holds."""
    out = _Appender(group)
    first = int(group.attrs.get("rows", 0))
    for field in schema:
        have = out.rows(field)
        if have < first:  # a column added to the schema after these rows: defaults, as readers fill them
            out.column(field, _encode(_zeros(field, first - have), field))
        out.column(field, _encode(rows.column(field.name), field))
    if superseded is not None and len(superseded):
        out.append(SUPERSEDED, np.asarray(superseded, np.int64), _CHUNK_ROWS, ("entry",))
    group.attrs.update({"rows": first + rows.num_rows, "table_layout": TABLE_LAYOUT})
    return first


def create(group: zarr.Group, schema: pa.Schema) -> None:
    """An empty table in `group` (so plain readers find every column, even with no rows)."""
    append(group, schema, schema.empty_table())


# -- layout 1 ------------------------------------------------------------------------------
def read_legacy(group: zarr.Group | None, schema: pa.Schema) -> pa.Table:
    """A layout-1 table, whole: every row live, strings through Python (slow at scale; migrate)."""
    if group is None:
        return schema.empty_table()
    n = int(group.attrs.get("rows", 0))
    columns = []
    for field in schema:
        if field.name not in group:
            columns.append(pa.nulls(n, field.type) if field.nullable else _zeros(field, n))
            continue
        values = group[field.name][:]
        if pa.types.is_string(field.type):
            arr = pa.array([None if (v == "" and field.nullable) else str(v) for v in values], pa.string())
        else:
            arr = _numbers(values, field)
        columns.append(arr)
    return pa.Table.from_arrays(columns, schema=schema)
