"""`catalog.parquet/` beside the store: the newest commit's catalog as a Parquet dataset.

    pq.read_table("STORE/catalog.parquet")                          # pyarrow reads the folder
    duckdb.sql("SELECT * FROM 'STORE/catalog.parquet/*.parquet'")   # DuckDB, Spark, polars alike

Promise: after each commit the folder holds that commit's catalog (CATALOG_SCHEMA: the live
index rows, `store_version` and `fps` filled in), and keeping it so costs what the commit
changed. It holds one part per index batch (`part-000012.parquet`: the live rows the twelfth
index-writing commit appended), so a commit writes its own part and rewrites only the parts
holding rows it superseded (a redone or retried episode's old row). `_lawam.json` names the
commit described (`version`, the newest: a label or curation commit renames it without
rewriting a part, since its rows are unchanged) and the newest index-writing commit the parts
hold (`index_version`); it is written last. Any writer (a no-op `lawam ingest` included) that
finds the parts behind the index — a run killed between its commit and this copy, or a
layout-1 store's single-file catalog — rewrites every part.

It is a convenience copy: a reader listing the folder while a commit rewrites parts may see a
redone episode twice or not at all. The index inside each commit is the source of truth
(`FeatureStore.open(uri, version).catalog()` reads any version).
"""

from __future__ import annotations

import json
import os

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store.index import EpisodeIndex
from pipeline.uri import is_remote, join_uri, local_path
from schemas import CATALOG_SCHEMA

CATALOG_DIR = "catalog.parquet"
STAMP = "_lawam.json"  # pyarrow and Spark skip names starting with "_"; DuckDB globs *.parquet


def catalog_table(index: pa.Table) -> pa.Table:
    """The catalog (CATALOG_SCHEMA) of index rows carrying `store_version`: their columns plus
    `fps` = frames / duration_s (null where nothing was kept)."""
    if "fps" not in index.column_names:
        frames = index["frames"].to_numpy(zero_copy_only=False).astype(np.float64)
        dur = index["duration_s"].to_numpy(zero_copy_only=False)
        fps = np.divide(frames, dur, out=np.zeros(len(dur)), where=dur > 0)
        index = index.append_column("fps", pa.array(fps, pa.float64(), mask=~(dur > 0)))
    for field in CATALOG_SCHEMA:
        if field.name not in index.column_names:
            index = index.append_column(field.name, pa.nulls(index.num_rows, field.type))
    return index.select(CATALOG_SCHEMA.names).cast(CATALOG_SCHEMA)


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    path = join_uri(uri, CATALOG_DIR)
    if not is_remote(uri):
        return fsspec.filesystem("file"), local_path(path)
    return fsspec.core.url_to_fs(path)


def _write(uri: str, fs, path: str, write) -> None:
    """Write a file whole: readers see the old one or the new one."""
    if not is_remote(uri):
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    else:
        with fs.open(path, "wb") as f:  # object-store PUTs are atomic
            write(f)


def _part(batch: int) -> str:
    return f"part-{batch:06d}.parquet"


def write_catalog(uri: str, index: EpisodeIndex, batches: list[int] | None = None, version: str | None = None) -> str:
    """Write the catalog parts of index `batches` (None: every part, removing any other file),
    then the stamp naming commit `version` (default: the one that appended the index's newest
    batch) and that batch's commit."""
    fs, root = _fs(uri)
    ends, ids = index.batches()
    if batches is None:
        if fs.isfile(root):  # a layout-1 store's single-file catalog
            fs.rm(root)
        fs.makedirs(root, exist_ok=True)
        keep = {_part(b) for b in range(len(ends))}
        for path in fs.ls(root, detail=False):
            if os.path.basename(path) not in keep and os.path.basename(path) != STAMP:
                fs.rm(path)
        batches = list(range(len(ends)))
    else:
        fs.makedirs(root, exist_ok=True)
    live = index.live_mask()
    for b in sorted(set(batches)):
        lo, hi = (int(ends[b - 1]) if b else 0), int(ends[b])
        part = catalog_table(index.batch_rows(lo, hi, live[lo:hi], ids[b]))
        _write(uri, fs, f"{root}/{_part(b)}", lambda f, t=part: pq.write_table(t, f))
    _stamp(uri, fs, root, version or (ids[-1] if ids else None), ids[-1] if ids else None, len(ends))
    return join_uri(uri, CATALOG_DIR)


def _stamp(uri: str, fs, root: str, version: str | None, index_version: str | None, parts: int) -> None:
    stamp = json.dumps({"version": version, "index_version": index_version, "parts": parts}).encode()
    _write(uri, fs, f"{root}/{STAMP}", lambda f: f.write(stamp))


def _read_stamp(uri: str) -> dict:
    """The stamp; one without `index_version` was written by a commit that wrote the index."""
    fs, root = _fs(uri)
    try:
        with fs.open(f"{root}/{STAMP}", "rb") as f:
            stamp = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def catalog_file_version(uri: str) -> str | None:
    """The commit URI/catalog.parquet describes (the newest commit, label and curation commits
    included); None when it is missing, unreadable, or a layout-1 single file."""
    return _read_stamp(uri).get("version")


def catalog_index_version(uri: str) -> str | None:
    """The newest index-writing commit whose rows URI/catalog.parquet's parts hold."""
    stamp = _read_stamp(uri)
    return stamp.get("index_version", stamp.get("version"))


def sync_catalog_file(uri: str, index: EpisodeIndex, version: str | None = None) -> bool:
    """Make URI/catalog.parquet describe `index` of commit `version` (the branch tip; default:
    the commit that appended the index's newest batch): every part is rewritten when the parts
    are behind the index, only the stamp when the commit wrote no index row. True if a part was
    rewritten. Call with the writer lock held."""
    _, ids = index.batches()
    if not ids:
        return False
    stamp = _read_stamp(uri)
    if catalog_index_version(uri) != ids[-1] or "parts" not in stamp:
        write_catalog(uri, index, version=version)
        return True
    if version and stamp.get("version") != version:
        fs, root = _fs(uri)
        _stamp(uri, fs, root, version, ids[-1], int(stamp["parts"]))
    return False
