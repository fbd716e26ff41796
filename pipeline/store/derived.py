"""Derived sets: per-episode data computed from the features and stored beside them — label
sets (`pipeline.store.labels`) and curation sets (`pipeline.store.curation`) alike.

Promise (DESIGN.md, "Label sets" and "Curation"): a set is keyed by what made it (a LaWM's
weights, a curation config); sets of two makers never mix, several coexist, and each is added
to in commits, incrementally — only episodes without current rows of that set, or redone since.

Layout, inside the same Icechunk repository (a store version pins the features *and* what was
derived from them):

    /<group>/<set>/                  attrs: what made it (lineage)
    /<group>/<set>/shards/<run>/...  the arrays of the episodes one run added, back to back
    /<group>/<set>/index/...         one row per episode: key, content_hash, shard, where its rows are

A row is *current* while its content hash equals the episode's in the store index. A redone
episode (its video changed) keeps its key and gets a new hash, so what was derived from its old
features stops being served at once and the next run redoes it: nothing derived from old
features is ever handed out as if it were new.

The writer holds the store's writer lock from `open()` to `close()` and publishes in one
commit, which also rewrites the set's index (`write_index`, as the episode index is): a run
killed mid-way leaves nothing of its own visible. The index tables of every set are read and
written here and nowhere else.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime
from typing import ClassVar, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from pipeline.errors import one_line
from pipeline.store.backend import StoreError, WriterLock, open_repo
from pipeline.store.catalog_file import sync_catalog_file
from pipeline.store.format import checksummed
from pipeline.store.index import read_index, write_index
from pipeline.store.reader import CHUNK_ERRORS, FeatureStore, StoreCorruptError
from schemas.errors import ConfigError

log = logging.getLogger(__name__)

_SET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FLUSH_BYTES = 64 << 20  # buffered rows are written in blocks of about this size

S = TypeVar("S", bound="DerivedSet")


class DerivedSet:
    """One set, read-only, at the store version it was opened with. Subclasses name their
    group, index schema and arrays."""

    GROUP: ClassVar[str]  # top-level group of the store holding sets of this kind
    SCHEMA: ClassVar[pa.Schema]  # the index: key, content_hash, shard, ...
    WHAT: ClassVar[str]  # "label set", in messages
    MAKE: ClassVar[str]  # the command that writes one, in messages

    def __init__(self, store: FeatureStore, set_id: str, group: zarr.Group):
        self.store = store
        self.id = set_id
        self.group = group
        self.attrs = dict(group.attrs)
        table = read_index(group, self.SCHEMA)
        hashes = dict(zip(store.keys.tolist(), store.episodes()["content_hash"].to_pylist(), strict=True))
        keys = table["key"].to_pylist()
        current = [hashes.get(k) == h for k, h in zip(keys, table["content_hash"].to_pylist(), strict=True)]
        self.index = table
        self._current = {k: i for i, (k, ok) in enumerate(zip(keys, current, strict=True)) if ok}
        # episodes whose rows were computed from features since redone
        self.stale = sum(1 for k, ok in zip(keys, current, strict=True) if not ok and k in hashes)
        self._shard = table["shard"].to_pylist()
        self._arrays: dict[str, zarr.Array] = {}

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

    def __contains__(self, key: str) -> bool:
        return key in self._current

    @property
    def keys(self) -> list[str]:
        """Episodes with current rows."""
        return list(self._current)

    @property
    def current(self) -> pa.Table:
        """The index rows of episodes with current rows, in index order."""
        return self.index.take(sorted(self._current.values()))

    def _array(self, shard: str, name: str) -> zarr.Array:
        path = f"{shard}/{name}"
        if path not in self._arrays:
            self._arrays[path] = self.group[f"shards/{path}"]
        return self._arrays[path]

    def read_rows(self, key: str, name: str, start: int, n: int) -> np.ndarray:
        """Rows [start, start + n) of array `name` in the shard of `key`'s index row; a chunk
        that does not decode is a StoreCorruptError naming the episode, set and shard."""
        shard = self._shard[self._current[key]]
        try:
            return self._array(shard, name)[start : start + n]
        except CHUNK_ERRORS as e:
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
        self.index = read_index(self.group, self.SCHEMA)
        self.shard = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self._rows: dict[str, dict] = {}
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._buffered = 0  # bytes in _buffers
        self._length: dict[str, int] = {}  # rows of each array written or buffered by this run

    @classmethod
    def open(cls, uri: str, set_id: str, attrs: dict, *, branch: str = "main"):
        lock = WriterLock(uri).__enter__()
        try:
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

    def todo(self, store: FeatureStore, redo: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Keys of `store`'s episodes that lack current rows of this set, and those in `redo`
        (done again on purpose: damaged, or chosen; their new rows replace the old at commit),
        in store order. `store` should be the version this writer starts from
        (`parent_version`); a key of `redo` it does not hold is a ConfigError naming it."""
        missing = sorted(set(redo) - set(store.keys.tolist()))
        if missing:
            raise ConfigError(f"store {store.uri!r} at {store.version} has no episode {missing[0]!r} to redo "
                              f"({len(missing)} unknown; keys are source/episode_id, as `lawam catalog` lists them)")
        have = dict(zip(self.index["key"].to_pylist(), self.index["content_hash"].to_pylist(), strict=True))
        hashes = store.episodes()["content_hash"].to_pylist()
        return [k for k, h in zip(store.keys.tolist(), hashes, strict=True) if have.get(k) != h or k in redo]

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
        """Buffer one episode's index row (this run's shard filled in); replaces its old row at commit."""
        self._rows[row["key"]] = {**row, "shard": self.shard}

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

    def tables(self, index: pa.Table) -> None:
        """Write what else the commit publishes beside the new index (subclasses: more tables)."""

    def commit(self, message: str, metadata: dict | None = None) -> str | None:
        """Publish the buffered rows and the updated index as one new version; None (and no
        commit) when nothing was put."""
        if not self._rows:
            return None
        self._flush()
        old = self.index.filter(pc.invert(pc.is_in(self.index["key"], pa.array(list(self._rows), pa.string()))))
        table = pa.concat_tables([old, pa.Table.from_pylist(list(self._rows.values()), schema=self.SCHEMA)])
        write_index(self.group, table, self.SCHEMA)
        self.tables(table)
        version = self.session.commit(message, metadata={f"lawam_{self.META}": self.set_id, **(metadata or {})})
        log.info("committed %s: %s %s, %d episodes", version, self.WHAT, self.set_id, len(self._rows))
        self.index = table
        self._rows.clear()
        try:  # the episodes are as they were; catalog.parquet names the newest commit, as it promises
            sync_catalog_file(self.uri, FeatureStore.open(self.uri, version).index, version)
        except OSError as e:
            log.warning("could not write catalog.parquet: %s (the next run rewrites it)", e)
        return version
