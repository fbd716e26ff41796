"""Derived sets: per-episode data computed from the features and stored beside them — label
sets (`pipeline.store.labels`) and curation sets (`pipeline.store.curation`) alike.

Promise (DESIGN.md, "Label sets" and "Curation"): a set is keyed by what made it (a LaWM's
weights, a curation config); sets of two makers never mix, several coexist, and each is added
to in commits, incrementally — only episodes without current rows of that set, or redone since.
A commit costs what it adds, whatever the set and the store hold.

Layout, inside the same Icechunk repository (a store version pins the features *and* what was
derived from them):

    /<group>/<set>/                  attrs: what made it (lineage)
    /<group>/<set>/shards/<run>/...  the arrays of the episodes one run added, back to back
    /<group>/<set>/index/...         an append-only table (`pipeline.store.table`), one live row per
                                     episode: key, key_hash, content_hash, index_row, shard, where
                                     its rows are

A row is *current* while the features it was computed from are the episode's in the store:
its `index_row` is the episode's live row of the episode index, or (a retitled episode, or a
row migrated from layout 1) its content hash is the episode's. A redone episode (its video
changed) keeps its key and gets a new index row and hash, so what was derived from its old
features stops being served at once and the next run redoes it: nothing derived from old
features is ever handed out as if it were new. Matching is in numpy, on numbers: a string is
compared only for rows whose index row was superseded.

The writer holds the store's writer lock from `open()` to `close()` and publishes in one
commit, which appends the new index rows and marks the rows they replace superseded: a run
killed mid-way leaves nothing of its own visible. The index tables of every set are read and
written here and nowhere else.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime
from functools import cached_property
from typing import ClassVar, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from pipeline.errors import one_line
from pipeline.store import table
from pipeline.store.backend import StoreError, WriterLock, open_repo
from pipeline.store.catalog_file import sync_catalog_file
from pipeline.store.format import checksummed
from pipeline.store.index import EpisodeIndex
from pipeline.store.migrate import INDEX, index_table, migrate_if_needed
from pipeline.store.reader import CHUNK_ERRORS, EpisodeKeys, FeatureStore, StoreCorruptError
from pipeline.store.table import key_hash
from schemas.errors import ConfigError

log = logging.getLogger(__name__)

_SET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FLUSH_BYTES = 64 << 20  # buffered rows are written in blocks of about this size

S = TypeVar("S", bound="DerivedSet")


def match(store: FeatureStore, rows: table.Table) -> tuple[np.ndarray, np.ndarray, int]:
    """Which live rows of a set's index are current for `store`'s episodes: (position in the
    live rows of each episode row's current one, -1 where none; the stored numbers of the live
    rows; how many episodes have only a stale row)."""
    live = rows.live()
    index_row = rows.take("index_row", live).to_numpy()
    episodes = store.index_rows  # ascending
    i = np.minimum(np.searchsorted(episodes, index_row), max(len(episodes) - 1, 0))
    direct = (index_row >= 0) & (episodes[i] == index_row) if len(episodes) else np.zeros(len(live), bool)
    at = np.where(direct, i, -1)
    stale = 0
    rest = np.flatnonzero(~direct)
    if len(rest) and len(store):  # compare content hashes of the episodes with those keys now
        found = store.rows_by_hash(rows.take("key_hash", live[rest]).to_numpy())
        hit = found >= 0
        if hit.any():
            now = store.episodes(["content_hash"])["content_hash"].take(pa.array(np.where(hit, found, 0)))
            same = hit & pc.equal(now, rows.take("content_hash", live[rest])).to_numpy(zero_copy_only=False)
            at[rest[same]] = found[same]
            stale = int((hit & ~same).sum())
    of_row = np.full(len(store), -1, np.int64)
    current = np.flatnonzero(at >= 0)
    of_row[at[current]] = current
    return of_row, live, stale


class DerivedSet:
    """One set, read-only, at the store version it was opened with. Subclasses name their
    group, index schema and arrays. Its rows are numbered by position among the index's live
    rows (`_of_row[store row]`: the current one of an episode, -1 where none)."""

    GROUP: ClassVar[str]  # top-level group of the store holding sets of this kind
    SCHEMA: ClassVar[pa.Schema]  # the index: key, key_hash, content_hash, index_row, shard, row_start, rows, ...
    WHAT: ClassVar[str]  # "label set", in messages
    MAKE: ClassVar[str]  # the command that writes one, in messages

    def __init__(self, store: FeatureStore, set_id: str, group: zarr.Group):
        self.store = store
        self.id = set_id
        self.group = group
        self.attrs = dict(group.attrs)
        self.table = index_table(group, self.SCHEMA)
        # episodes whose rows were computed from features since redone: `stale`
        self._of_row, self._stored, self.stale = match(store, self.table)
        self._arrays: dict[str, zarr.Array] = {}

    # Where each live row's arrays are: read on first use (counting labelled episodes needs none).
    @cached_property
    def _shards(self) -> tuple[np.ndarray, list[str]]:
        shards = pc.dictionary_encode(self.table.take("shard", self._stored))
        return shards.indices.to_numpy(zero_copy_only=False), shards.dictionary.to_pylist()

    @cached_property
    def _start(self) -> np.ndarray:
        return self.table.take("row_start", self._stored).to_numpy()

    @cached_property
    def _rows(self) -> np.ndarray:
        return self.table.take("rows", self._stored).to_numpy()

    @classmethod
    def open(cls: type[S], store: FeatureStore, set_id: str) -> S:
        path = f"{cls.GROUP}/{set_id}"
        if path not in store.root:
            have = [s.id for s in cls.list_in(store)]
            raise StoreError(f"store {store.uri!r} has no {cls.WHAT} {set_id!r} at version {store.version}"
                             f" (it has {have or 'none'}; {cls.MAKE})")
        return cls(store, set_id, store.root[path])

    @classmethod
    def list_in(cls: type[S], store: FeatureStore) -> list[S]:
        """Every set of this kind in the store version, by id."""
        if cls.GROUP not in store.root:
            return []
        names = sorted(store.root[cls.GROUP].group_keys())
        return [cls(store, name, store.root[f"{cls.GROUP}/{name}"]) for name in names]

    def _pos(self, key: str) -> int:
        """Position among the live rows of `key`'s current row; -1 where none."""
        row = int(self.store.rows([key])[0])
        return int(self._of_row[row]) if row >= 0 else -1

    def __contains__(self, key: str) -> bool:
        return self._pos(key) >= 0

    def has_rows(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) bool: which store rows `rows` have current rows in this set."""
        return self._of_row[np.asarray(rows, np.int64)] >= 0

    @property
    def labelled(self) -> int:
        """Episodes with current rows."""
        return int((self._of_row >= 0).sum())

    @property
    def keys(self) -> EpisodeKeys:
        """Episodes with current rows, in store order."""
        return EpisodeKeys(self.store.keys.arrow.filter(pa.array(self._of_row >= 0)))

    @cached_property
    def index(self) -> pa.Table:
        """Every live index row (current and stale), every column, in stored order."""
        return self.table.read(rows=self._stored)

    @property
    def current(self) -> pa.Table:
        """The index rows of episodes with current rows, in stored order."""
        return self.table.read(rows=np.sort(self._stored[self._of_row[self._of_row >= 0]]))

    def _shard(self, i: int) -> str:
        codes, names = self._shards
        return names[codes[i]]

    def _array(self, shard: str, name: str) -> zarr.Array:
        path = f"{shard}/{name}"
        if path not in self._arrays:
            self._arrays[path] = self.group[f"shards/{path}"]
        return self._arrays[path]

    def read_rows(self, i: int, name: str, start: int | None = None, n: int | None = None) -> np.ndarray:
        """Rows [start, start + n) (default: the row's own, row_start and rows) of array `name`
        in the shard of live row `i`; a chunk that does not decode is a StoreCorruptError naming
        the episode, set and shard."""
        start = int(self._start[i]) if start is None else start
        n = int(self._rows[i]) if n is None else n
        shard = self._shard(i)
        try:
            return self._array(shard, name)[start : start + n]
        except CHUNK_ERRORS as e:
            key = self.table.take("key", self._stored[i : i + 1])[0].as_py()
            raise StoreCorruptError(
                f"store {self.store.uri!r} version {self.store.version}: {name} of episode {key} ({self.WHAT} "
                f"{self.id}, shard {shard}) cannot be read: {one_line(e)[:200]}") from e


class DerivedSetWriter:
    """The one writer of a set. Holds the store's writer lock from `open()` to `close()`;
    `append()` buffers array rows, `put()` an index row, `commit()` publishes them all in one
    new version. Subclasses name the group, index schema and arrays."""

    GROUP: ClassVar[str]
    SCHEMA: ClassVar[pa.Schema]
    WHAT: ClassVar[str]
    META: ClassVar[str]  # commit metadata key naming the set: `lawam_<META>`
    # array name -> (dimension names, rows per chunk, description)
    ARRAYS: ClassVar[dict[str, tuple[tuple[str, ...], int, str]]]

    def __init__(self, uri: str, set_id: str, attrs: dict, branch: str, lock: WriterLock):
        if not _SET_ID.match(set_id):
            raise ValueError(f"{self.WHAT} id {set_id!r}: letters, digits, '.', '_' or '-' only")
        self.uri, self.set_id, self.branch, self._lock = uri, set_id, branch, lock
        self.repo = open_repo(uri, create=False)
        self.session = self.repo.writable_session(branch)
        self.parent_version: str = self.session.snapshot_id
        self.root = zarr.open_group(self.session.store, mode="a")
        path = f"{self.GROUP}/{set_id}"
        self.created = path not in self.root
        if self.created:
            self.group = self.root.require_group(path)
            self.group.attrs.update({**attrs, "created_at": datetime.now(UTC).isoformat(timespec="seconds")})
        else:
            self.group = self.root[path]
            self.check_attrs(dict(self.group.attrs), attrs)
        self.table = index_table(self.group, self.SCHEMA)
        self.shard = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self._rows: dict[str, dict] = {}
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._buffered = 0  # bytes in _buffers
        self._length: dict[str, int] = {}  # rows of each array written or buffered by this run
        self._store: FeatureStore | None = None  # the version the rows are computed from (`todo`)

    @classmethod
    def open(cls, uri: str, set_id: str, attrs: dict, *, branch: str = "main"):

        lock = WriterLock(uri).__enter__()
        try:
            migrate_if_needed(uri, open_repo(uri, create=False), branch)  # a layout-1 store: its own commit, first
            return cls(uri, set_id, attrs, branch, lock)
        except BaseException:
            lock.__exit__(None, None, None)
            raise

    def check_attrs(self, stored: dict, attrs: dict) -> None:
        """Refuse to add to an existing set what another maker made (subclasses say how)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock; rows not committed are dropped (and stay invisible)."""
        self._lock.__exit__(None, None, None)

    @cached_property
    def index(self) -> pa.Table:
        """The live index rows, every column, as committed (what a run builds on)."""
        return self.table.read()

    def todo(self, store: FeatureStore, redo: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Keys of `store`'s episodes that lack current rows of this set, and those in `redo`
        (done again on purpose: damaged, or chosen; their new rows replace the old at commit),
        in store order. `store` should be the version this writer starts from
        (`parent_version`); a key of `redo` it does not hold is a ConfigError naming it."""
        self._store = store
        again = sorted(redo)
        rows = store.rows(again) if again else np.zeros(0, np.int64)
        if (rows < 0).any():
            missing = [k for k, r in zip(again, rows.tolist(), strict=True) if r < 0]
            raise ConfigError(f"store {store.uri!r} at {store.version} has no episode {missing[0]!r} to redo "
                              f"({len(missing)} unknown; keys are source/episode_id, as `lawam catalog` lists them)")
        of_row, _, _ = match(store, self.table)
        want = of_row < 0
        want[rows] = True
        return store.keys[want].tolist()

    def _fill_index_rows(self, rows: list[dict]) -> None:
        """Set each buffered row's `index_row`: the stored index row of its episode in the store
        the rows are computed from, when its content hash is the row's; -1 otherwise (matched by
        hash, or stale). All at once: the hashes of the new rows' episodes, not of the corpus."""
        if self._store is None:
            self._store = FeatureStore.open(self.uri, self.parent_version)
        store = self._store
        at = store.rows([r["key"] for r in rows])
        found = np.flatnonzero(at >= 0)
        now = np.full(len(rows), None, dtype=object)
        now[found] = store.values("content_hash", at[found]).to_numpy(zero_copy_only=False)
        for r, a, h in zip(rows, at.tolist(), now.tolist(), strict=True):
            r["index_row"] = int(store.index_rows[a]) if h is not None and h == r["content_hash"] else -1

    def append(self, name: str, data: np.ndarray) -> int:
        """Buffer rows of array `name` of this run's shard; returns the row the first lands at."""
        start = self._length.get(name, 0)
        self._buffers.setdefault(name, []).append(data)
        self._length[name] = start + len(data)
        self._buffered += data.nbytes
        if self._buffered > _FLUSH_BYTES:
            self._flush()
        return start

    def put(self, row: dict) -> None:
        """Buffer one episode's index row (this run's shard, its key hash and index row filled
        in unless given); replaces its old row at commit."""
        key = row["key"]
        self._rows[key] = {"shard": self.shard, **row, "key_hash": key_hash(key)}  # index_row: at commit

    def _flush(self) -> None:
        shard = self.group.require_group(f"shards/{self.shard}")
        for name, bufs in self._buffers.items():
            if not bufs:
                continue
            data = np.concatenate(bufs)
            if name not in shard:
                dims, chunk_rows, description = self.ARRAYS[name]
                shard.create_array(name, shape=(0, *data.shape[1:]), chunks=(chunk_rows, *data.shape[1:]),
                                   dtype=data.dtype, dimension_names=dims, compressors=checksummed(),
                                   attributes={"description": description})
            arr = shard[name]
            start = arr.shape[0]
            arr.resize((start + len(data), *data.shape[1:]))
            arr[start:] = data
        self._buffers, self._buffered = {}, 0

    @property
    def pending(self) -> int:
        return len(self._rows)

    def tables(self, new: pa.Table) -> None:
        """Write what else the commit publishes beside the new index rows (subclasses: more tables)."""

    def commit(self, message: str, metadata: dict | None = None) -> str | None:
        """Publish the buffered rows (appended to the index, replacing the keys' old rows) as
        one new version; None (and no commit) when nothing was put."""
        if not self._rows:
            return None
        self._flush()
        self._fill_index_rows(list(self._rows.values()))
        new = pa.Table.from_pylist(list(self._rows.values()), schema=self.SCHEMA)
        live = self.table.live()
        hashes = self.table.take("key_hash", live)
        replaced = live[pc.is_in(hashes, value_set=new["key_hash"]).to_numpy(zero_copy_only=False)]
        table.append(self.group.require_group(INDEX), self.SCHEMA, new, replaced)
        self.tables(new)
        version = self.session.commit(message, metadata={f"lawam_{self.META}": self.set_id, **(metadata or {})})
        log.info("committed %s: %s %s, %d episodes", version, self.WHAT, self.set_id, len(self._rows))
        self._rows.clear()
        try:  # the episodes are as they were; catalog.parquet names the newest commit, as it promises
            root = zarr.open_group(self.repo.readonly_session(snapshot_id=version).store, mode="r")
            sync_catalog_file(self.uri, EpisodeIndex(root, self.repo, version), version)
        except OSError as e:
            log.warning("could not write catalog.parquet: %s (the next run rewrites it)", e)
        return version
