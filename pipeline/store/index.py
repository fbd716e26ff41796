"""The episode index: one row per version of an episode, an append-only table under /index.

Promise: finding an episode never lists storage, and the index costs what changed, not what
the corpus holds. It is a `pipeline.store.table` table of INDEX_SCHEMA: a commit appends the
rows it adds and lists in `superseded` the rows they replace (a redone, retried or retitled
episode keeps its key, and its newest row wins), so there is one live row per episode key. A
reader loads the few columns it needs as numpy and Arrow arrays — tens of MB at a million
episodes — and the writer only what it looks up.

Each row carries `key_hash`, the first 8 bytes of sha256(key): the held-out split
(`pairs.is_heldout`) and lookups by key (`KeyLookup`) use it without a string per episode.

Which commit added a row: /index/commits/rows holds the stored row count after each commit that
appended to the index, /index/commits/version that commit's id. A commit cannot name itself,
so the newest entry may be "": it is the newest commit at or before the version read whose
metadata has `lawam_index_rows` (label commits and commits of file hashes alone have not), and
the next index-writing commit writes its id down.

Version-1 stores (the index rewritten whole per commit, `store_version` a column) are read as
they are; `pipeline.store.migrate` rewrites them in this layout.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from pipeline.store import table
from pipeline.store.format import checksummed
from pipeline.store.table import key_hash, key_hashes
from schemas import CATALOG_SCHEMA, INDEX_SCHEMA

INDEX_GROUP = "index"
COMMITS = "commits"
ROWS_KEY = "lawam_index_rows"  # in the metadata of every commit that appends to the index
LEGACY_RUN_KEY = "lawam_run"  # every writer commit; in layout 1 each one rewrote the index
LEGACY_INDEX_SCHEMA = pa.schema([f for f in CATALOG_SCHEMA if f.name != "fps"])

__all__ = ["EpisodeIndex", "KeyLookup", "append", "episode_keys", "index_commit_at", "key_hash", "key_hashes"]


def episode_keys(source: pa.Array, episode_id: pa.Array) -> pa.Array:
    """Keys `source/episode_id`, as one Arrow array."""
    keys = pc.binary_join_element_wise(source, episode_id, "/")
    return keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys


def index_commit_at(repo, snapshot_id: str, *, legacy: bool = False) -> str:
    """The newest commit at or before `snapshot_id` that appended to the index. `legacy`: by
    layout 1's rule, where every writer commit (metadata `lawam_run`) rewrote it."""
    key = LEGACY_RUN_KEY if legacy else ROWS_KEY
    for snap in repo.ancestry(snapshot_id=snapshot_id):
        if key in (snap.metadata or {}):
            return snap.id
    return snapshot_id


class EpisodeIndex(table.Table):
    """The episode index of one version (read-only); `repo` and `version` resolve which
    commit added the newest rows."""

    def __init__(self, root: zarr.Group, repo=None, version: str | None = None):
        super().__init__(root.get(INDEX_GROUP), INDEX_SCHEMA, LEGACY_INDEX_SCHEMA,
                         legacy_keys=lambda t: episode_keys(t["source"], t["episode_id"]))
        self._repo, self._version = repo, version
        self._batches: tuple[np.ndarray, list[str]] | None = None

    def batches(self) -> tuple[np.ndarray, list[str]]:
        """(ends, ids): stored rows [ends[i - 1], ends[i]) were appended by commit ids[i]."""
        if self._batches is None:
            self._batches = self._read_batches()
        return self._batches

    def _read_batches(self) -> tuple[np.ndarray, list[str]]:
        if self.legacy is not None:  # runs of equal store_version; "" rows are the newest commit's
            sv = self.legacy["store_version"].fill_null("").to_numpy(zero_copy_only=False)
            ends = np.flatnonzero(np.append(sv[1:] != sv[:-1], True)) + 1 if len(sv) else np.zeros(0, np.int64)
            ids = [str(sv[e - 1]) for e in ends]
            return ends, [i or self._resolve(legacy=True) for i in ids]
        if self.group is None or COMMITS not in self.group:
            return np.zeros(0, np.int64), []
        commits = self.group[COMMITS]
        ends = commits["rows"][:].astype(np.int64)
        ids = [str(v) for v in commits["version"][:]]
        return ends, [i or self._resolve() for i in ids]

    def _resolve(self, legacy: bool = False) -> str:
        if self._repo is None or self._version is None:
            return ""
        return index_commit_at(self._repo, self._version, legacy=legacy)

    def store_versions(self, rows: np.ndarray) -> pa.Array:
        """The commit that appended each stored row of `rows`."""
        ends, ids = self.batches()
        which = np.searchsorted(ends, rows, side="right")
        return pa.array(ids + [None], pa.string()).take(pa.array(np.minimum(which, len(ids)), pa.int64()))

    def batch_rows(self, lo: int, hi: int, live: np.ndarray, version: str) -> pa.Table:
        """Every column of the stored rows [lo, hi) where `live`, all appended by commit `version`:
        read as ranges, so one batch costs its own rows."""
        mask = pa.array(live, pa.bool_())
        cols = [self.column(name, lo, hi).filter(mask) for name in self.schema.names]
        t = pa.Table.from_arrays(cols, schema=self.schema)
        return t.append_column("store_version", pa.array([version] * t.num_rows, pa.string()))

    def catalog_rows(self, rows: np.ndarray | None = None) -> pa.Table:
        """Every column of the live rows (or stored rows `rows`), `store_version` included."""
        rows = self.live() if rows is None else rows
        t = self.read(rows=rows)
        return t.append_column("store_version", self.store_versions(rows))


def append(root: zarr.Group, rows: pa.Table, superseded: np.ndarray, parent_batch: str) -> int:
    """Append `rows` to the index in `root` (a writable session), marking stored rows
    `superseded` dead, and record the batch; `parent_batch` is the id of the commit that added
    the previous batch (its "" entry is filled with it). Returns the first new row."""
    group = root.require_group(INDEX_GROUP)
    first = table.append(group, INDEX_SCHEMA, rows, superseded)
    commits = group.require_group(COMMITS)
    ends, ids = _commit_arrays(commits)
    n = ends.shape[0]
    if n and not ids[n - 1]:
        ids[n - 1] = parent_batch
    record_batches(commits, np.array([first + rows.num_rows]), [""])
    return first


def _commit_arrays(commits: zarr.Group) -> tuple[zarr.Array, zarr.Array]:
    if "rows" not in commits:
        commits.create_array("rows", shape=(0,), chunks=(4096,), dtype=np.int64, compressors=checksummed(),
                             dimension_names=("commit",))
        commits.create_array("version", shape=(0,), chunks=(4096,), dtype=str, compressors=checksummed(),
                             dimension_names=("commit",))
    return commits["rows"], commits["version"]


def record_batches(commits: zarr.Group, ends: np.ndarray, ids: list[str]) -> None:
    """Append batches (stored row count after each, the commit that appended it) to /index/commits."""
    rows, versions = _commit_arrays(commits)
    n = rows.shape[0]
    rows.resize((n + len(ends),))
    versions.resize((n + len(ends),))
    if len(ends):
        rows[n:] = np.asarray(ends, np.int64)
        versions[n:] = np.array(ids, dtype=object)


class KeyLookup:
    """Positions by key hash: sorted once (O(n log n) in numpy), then O(log n) per key. Live
    keys of a table have distinct hashes (the writer refuses a collision), so a hash names at
    most one row."""

    def __init__(self, hashes: np.ndarray, positions: np.ndarray | None = None):
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]
        self._positions = order if positions is None else positions[order]

    def find(self, hashes: np.ndarray) -> np.ndarray:
        """Position of each hash; -1 where none."""
        hashes = np.asarray(hashes, np.uint64)
        if not len(self._hashes):
            return np.full(len(hashes), -1, np.int64)
        i = np.minimum(np.searchsorted(self._hashes, hashes), len(self._hashes) - 1)
        return np.where(self._hashes[i] == hashes, self._positions[i], -1)


def committed_attrs(uri: str, branch: str = "main") -> dict:
    """The root attributes (encoder identity, layout, token shape) of the branch's newest
    commit, without reading the index; {} when there is no store (or branch) yet."""
    root = committed_root(uri, branch)
    return {} if root is None else dict(root.attrs)


def committed_root(uri: str, branch: str) -> zarr.Group | None:
    """The root group of the branch's newest commit, read without the writer lock; None when
    there is no store (or branch) yet."""
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
