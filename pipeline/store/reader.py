"""Read access to a feature store, pinned to one version.

    store = FeatureStore.open("data/store")            # newest commit on main
    store.version                                      # record it with your training run
    store = FeatureStore.open("data/store", version=v)  # exactly that commit, later
    ep = store.episode("source/episode_id")             # features, timestamps, actions

Training pairs are read through `pipeline.store.pairs.PairReader` (k in seconds), the one
pair path of every trainer and of labelling.

Only committed data is visible; a reader never sees a half-written episode. Feature reads
go through an LRU cache of decompressed chunks, so a trainer reading episodes at random
touches storage once per chunk, not once per frame.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from pipeline.errors import one_line
from pipeline.store.backend import StoreError, open_repo, unknown_version
from pipeline.store.catalog_file import catalog_table
from pipeline.store.format import has_no_state
from pipeline.store.index import EpisodeIndex, KeyLookup, episode_keys, key_hash
from schemas import INDEX_SCHEMA, STORE_LAYOUT_VERSION, EpisodeStatus
from schemas.errors import ResourceError, StoreMismatchError
from schemas.identity import EncoderIdentity
from schemas.records import ActionTrack

log = logging.getLogger(__name__)


class StoreCorruptError(ResourceError):
    """Stored bytes do not decode (a chunk whose checksum does not match, or that is missing):
    one line naming the episode, shard and version. A retry reads the same bytes: run
    `lawam verify` to list every damaged episode, then re-ingest them into a new version."""

    advice = ("a retry reads the same bytes: `lawam verify` lists every damaged episode; restore the store "
              "from a backup, or re-ingest those episodes into a new version (not retried)")


# What zarr raises for a chunk it cannot decode: CRC32C mismatch (ValueError), zstd
# (RuntimeError), a truncated buffer (ValueError/TypeError). Network faults are Icechunk's
# own errors and stay retryable.
CHUNK_ERRORS = (ValueError, RuntimeError, TypeError)


@dataclass(frozen=True)
class VersionInfo:
    id: str
    message: str
    written_at: object
    metadata: dict


@dataclass
class Episode:
    key: str  # 'source/episode_id': the episode's identity in every version
    features: np.ndarray  # (N, T, D) float16
    timestamps: np.ndarray  # (N,) float64 seconds from the episode start
    actions: ActionTrack | None
    instruction: str | None
    kind: str = "robot"  # robot | human
    fps: float = 0.0  # the rate its frames were sampled at
    split: str | None = None  # the source's own split, if it names one


class EpisodeKeys(Sequence):
    """The keys ('source/episode_id') of a version's episodes, row by row, held as one Arrow
    array: a million keys are tens of MB, and a Python string exists only for a key asked for.
    `keys[i]` is a str; `keys[rows]` (an integer or boolean array) a numpy array of str."""

    def __init__(self, keys: pa.Array):
        self.arrow = keys

    def __len__(self) -> int:
        return len(self.arrow)

    def __getitem__(self, i):
        if isinstance(i, int | np.integer):
            return self.arrow[int(i)].as_py()
        rows = np.arange(len(self))[i] if isinstance(i, slice) else np.asarray(i)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return self.arrow.take(pa.array(rows, pa.int64())).to_numpy(zero_copy_only=False)

    def __iter__(self) -> Iterator[str]:
        for batch in range(0, len(self), 65536):
            yield from self.arrow.slice(batch, 65536).to_pylist()

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and pc.index(self.arrow, key).as_py() >= 0

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.arrow.to_numpy(zero_copy_only=False)

    def tolist(self) -> list[str]:
        return self.arrow.to_pylist()


class FeatureStore:
    """One pinned version of a store. Picklable: a copy sent to a DataLoader worker, a Ray
    task or a subprocess reopens `(uri, version)` there, with an empty cache of its own.

    Opening reads which stored index rows are episodes (live, status ok: a few MB at a million
    episodes); where each lives is read on first use, other columns (`episodes(columns)`,
    `keys`, `catalog()`) when asked. `share()` hands copies in other processes all of it
    memory-mapped."""

    def __init__(self, uri: str, repo, session, cache_bytes: int, pinned: bool = False, shared: str | None = None):
        self.uri = uri
        self._repo = repo
        self._session = session
        self.version: str = session.snapshot_id
        try:
            self.root = zarr.open_group(session.store, mode="r")
        except zarr.errors.GroupNotFoundError:
            if not pinned:
                raise StoreError(f"store {uri!r} has no committed data at {self.version}") from None
            # A version asked for by id that holds nothing (the repository's root commit, which
            # `lawam versions` lists): an empty store, not an error.
            self.root = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
        self.attrs = dict(self.root.attrs)
        if self.attrs.get("lawam_layout", 0) > STORE_LAYOUT_VERSION:
            raise StoreMismatchError(f"store {uri!r} has layout {self.attrs['lawam_layout']}, newer than this "
                                     f"lawam reads ({STORE_LAYOUT_VERSION}): upgrade lawam")
        self._index = EpisodeIndex(self.root, repo, self.version)
        # A memory-mapped copy of this version's episode columns (`share`), when one was handed over.
        self._shared = _map_shared(shared, uri, self.version) if shared else None
        self._shared_path: str | None = shared if self._shared is not None else None
        if self._shared is not None:
            self._pos = _one(self._shared, "index_row").to_numpy()
        else:
            ok = self._index.live_mask()
            ok &= pc.equal(self._index.column("status"), str(EpisodeStatus.OK)).to_numpy(zero_copy_only=False)
            self._pos = np.flatnonzero(ok)  # stored index row of each episode row
        self._every_row = len(self._pos) == self._index.rows  # episode row i is stored row i
        self._columns: dict[str, pa.Array] = {}
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0
        self._arrays: dict[str, zarr.Array | None] = {}
        self._ts: OrderedDict[int, np.ndarray] = OrderedDict()  # the newest _SMALL_CACHE episodes' ...
        self._tracks: OrderedDict[int, ActionTrack | None] = OrderedDict()  # ... timestamps and actions
        self._keys: EpisodeKeys | None = None
        self._lookup: KeyLookup | None = None

    # Where episodes live, read on first use (opening reads only which rows are episodes).
    @cached_property
    def _shard_code(self) -> np.ndarray:
        if self._shared is not None:
            return _one(self._shared, _SHARD_CODE).to_numpy()
        return self._shards[0]

    @cached_property
    def _shard_names(self) -> list[str]:
        if self._shared is not None:
            return json.loads(self._shared.schema.metadata[b"shards"])
        return self._shards[1]

    @cached_property
    def _shards(self) -> tuple[np.ndarray, list[str]]:
        if not len(self._pos):
            return np.zeros(0, np.int32), []
        shards = pc.dictionary_encode(self._column("shard", keep=False).fill_null(""))
        return shards.indices.to_numpy(zero_copy_only=False), shards.dictionary.to_pylist()

    @cached_property
    def _start_of(self) -> np.ndarray:
        return self._numbers("frame_start")

    @cached_property
    def _frames_of(self) -> np.ndarray:
        return self._numbers("frames")

    @cached_property
    def _action_start(self) -> np.ndarray:
        return self._numbers("action_start")

    @cached_property
    def _actions_of(self) -> np.ndarray:
        return self._numbers("actions")

    @cached_property
    def _fps_of(self) -> np.ndarray:
        dur = self._numbers("duration_s")
        return np.divide(self._frames_of, dur, out=np.zeros(len(dur)), where=dur > 0)

    def _numbers(self, name: str) -> np.ndarray:
        return self._column(name, keep=False).to_numpy()

    def _column(self, name: str, keep: bool = True) -> pa.Array:
        """Index column `name` over the episode rows, read on first use (and kept if `keep`)."""
        if name in self._columns:
            return self._columns[name]
        if self._shared is not None and name in self._shared.column_names:
            return _one(self._shared, name)  # mapped, not copied: nothing to keep
        if name == "store_version":
            col = self._index.store_versions(self._pos)
        elif self._every_row:
            col = self._index.column(name)
        else:
            col = self._index.column(name).take(pa.array(self._pos, pa.int64()))
        if keep:
            self._columns[name] = col
        return col

    def _shard_of(self, i: int) -> str:
        return self._shard_names[self._shard_code[i]]

    @classmethod
    def open(cls, uri: str, version: str | None = None, *, branch: str = "main",
             cache_bytes: int = 512 << 20, shared: str | None = None) -> FeatureStore:
        """Open `uri` at `version` (a commit id or a tag) or at the tip of `branch`. `shared`:
        the file `share()` wrote for this version, mapped instead of reading the index (ignored
        when it is gone or names another store or version)."""
        repo = open_repo(uri, create=False)
        try:
            session = (repo.readonly_session(snapshot_id=version) if version
                       else repo.readonly_session(branch=branch))
        except Exception as e:  # noqa: BLE001 - icechunk raises one error type for everything
            if not unknown_version(e):  # the object store failed, not the version: classify says so
                raise
            try:  # a tag (`lawam tag`) names a version too
                session = repo.readonly_session(tag=version) if version else None
            except Exception:  # noqa: BLE001 - reported as the unknown version below
                session = None
            if session is None:
                raise StoreError(f"store {uri!r} has no version {version or branch!r} (no commit, tag or branch "
                                 f"of that name, or expired by `lawam gc`); `lawam versions {uri}` lists them"
                                 ) from None
        return cls(uri, repo, session, cache_bytes, pinned=version is not None, shared=shared)

    def __reduce__(self):
        # Reopen by (uri, version) wherever it is unpickled: sessions and caches stay behind; the
        # shared episode table, when `share()` wrote one, is mapped there instead of read again.
        return (_reopen, (self.uri, self.version, self._cache_bytes, self._shared_path))

    def share(self) -> str:
        """Write this version's episode columns (where each episode lives, keys, sources,
        kinds, splits, instructions, key hashes) to an uncompressed Arrow file and return its
        path; a copy of this store unpickled on this machine (a DataLoader worker) maps that
        file instead of reading and decoding the index, so N workers hold one copy of it, in
        the page cache, instead of N. The file is deleted when this store is (or at exit);
        copies that mapped it keep their mapping, and a copy that finds it gone (another
        machine) reads the index itself. (A process killed outright leaves its file behind in
        the temp folder: `lawam-index-<version>-*.arrow`.)"""
        if self._shared_path is None:
            cols = {"index_row": pa.array(self._pos, pa.int64()), _SHARD_CODE: pa.array(self._shard_code, pa.int32()),
                    "key": self.keys.arrow.cast(pa.string())}
            cols.update({name: self._column(name, keep=False) for name in _SHARED})
            meta = {"lawam_uri": self.uri, "lawam_version": self.version, "shards": json.dumps(self._shard_names)}
            table = pa.table(cols).replace_schema_metadata(meta)
            fd, path = tempfile.mkstemp(prefix=f"lawam-index-{self.version}-", suffix=".arrow")
            try:
                with os.fdopen(fd, "wb") as f, pa.ipc.new_file(f, table.schema) as out:
                    out.write_table(table)
            except BaseException:
                os.unlink(path)
                raise
            weakref.finalize(self, _unlink, path)
            self._shared_path = path
            # This process reads the mapped file too: what it built to write it is let go.
            self._shared = _map_shared(path, self.uri, self.version)
            for name in _SHARED_FROM + ("_shards",):
                self.__dict__.pop(name, None)
            self._columns = {k: v for k, v in self._columns.items() if k not in self._shared.column_names}
            self._keys = None
        return self._shared_path

    # -- metadata ----------------------------------------------------------------------
    @property
    def encoder(self) -> EncoderIdentity | None:
        """The identity of the encoder that made every feature of the store; None while empty."""
        stored = self.attrs.get("encoder")
        return EncoderIdentity.from_dict(stored, where=f"store {self.uri!r}") if stored else None

    @property
    def token_shape(self) -> tuple[int, ...]:
        return tuple(self.attrs.get("token_shape", ()))

    def versions(self) -> list[VersionInfo]:
        """Commits reachable from this version, newest first."""
        return [VersionInfo(s.id, s.message, s.written_at, dict(s.metadata))
                for s in self._repo.ancestry(snapshot_id=self.version)]

    @property
    def index(self) -> pa.Table:
        """Every episode row this version knows of (quarantined ones included), every index
        column and `store_version`: read whole when asked."""
        return self._index.catalog_rows()

    def catalog(self, columns: list[str] | None = None) -> pa.Table:
        """Every episode this version knows of, quarantined ones included (CATALOG_SCHEMA), or
        only `columns` of it (index columns and `store_version`: what is not asked is not read)."""
        if columns is None:
            return catalog_table(self.index)
        live = self._index.live()
        return pa.table({c: self._index.store_versions(live) if c == "store_version" else self._index.take(c, live)
                         for c in columns})

    def episodes(self, columns: list[str] | None = None, *, keep: bool = True) -> pa.Table:
        """The ingested (status ok) episodes; row i is the episode `keys[i]`. `columns` (default:
        every index column and `store_version`) are read on first use and kept, unless `keep` is
        False (a column needed once: a reader holds only what it reads again)."""
        names = columns or [*INDEX_SCHEMA.names, "store_version"]
        return pa.table({name: self._column(name, keep) for name in names})

    def values(self, name: str, rows: np.ndarray) -> pa.Array:
        """Index column `name` at episode rows `rows` only: read from the stored rows they span
        (a few new episodes cost what they hold), unless the whole column is at hand already."""
        rows = np.asarray(rows, np.int64)
        if name in self._columns or (self._shared is not None and name in self._shared.column_names):
            return self._column(name).take(pa.array(rows, pa.int64()))
        if name == "store_version":
            return self._index.store_versions(self._pos[rows])
        return self._index.take(name, self._pos[rows])

    @property
    def keys(self) -> EpisodeKeys:
        """Row i's episode key, 'source/episode_id' (read on first use)."""
        if self._keys is None:
            if self._shared is not None:
                self._keys = EpisodeKeys(_one(self._shared, "key"))
            else:
                self._keys = EpisodeKeys(episode_keys(self._column("source", False),
                                                      self._column("episode_id", False)))
        return self._keys

    def __len__(self) -> int:
        return len(self._pos)

    def row(self, key: str) -> int:
        """Row of an ingested episode in this version (rows differ between versions, keys do not)."""
        i = int(self.rows([key])[0])
        if i < 0:
            raise KeyError(f"no ingested episode {key!r} in version {self.version}")
        return i

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """Rows of many episodes at once (-1 for a key with none), by the keys' 64-bit hashes."""
        rows = self.rows_by_hash(np.array([key_hash(k) for k in keys], np.uint64))
        for j in np.flatnonzero(rows >= 0).tolist():  # a hash names one live episode; check it is this one
            if self.keys[int(rows[j])] != keys[j]:
                rows[j] = -1
        return rows

    @property
    def index_rows(self) -> np.ndarray:
        """(episodes,) the stored /index row of each episode row, ascending: an episode version's
        identity in every later version (docs/store-format.md, "Tables")."""
        return self._pos

    def rows_by_hash(self, hashes: np.ndarray) -> np.ndarray:
        """Row of the episode whose `key_hash` is each of `hashes` (-1 where none). Live keys
        have distinct hashes (the writer refuses a collision); the first call sorts them."""
        if self._lookup is None:
            self._lookup = KeyLookup(self._numbers("key_hash"))
        return self._lookup.find(hashes)

    @property
    def fps(self) -> np.ndarray:
        """(episodes,) the frame rate each episode was sampled at (frames / duration)."""
        return self._fps_of

    @property
    def frames(self) -> np.ndarray:
        """(episodes,) frames per ingested episode."""
        return self._frames_of

    # -- data --------------------------------------------------------------------------
    def _array(self, shard: str, name: str) -> zarr.Array | None:
        """Array `name` of a shard, looked up once (None: the shard has none, e.g. `state`)."""
        key = f"{shard}/{name}"
        if key not in self._arrays:
            try:
                self._arrays[key] = self.root[f"shards/{key}"]
            except KeyError:
                self._arrays[key] = None
        return self._arrays[key]

    def _resolve(self, i: int | str) -> int:
        return self.row(i) if isinstance(i, str) else int(i)

    def episode(self, i: int | str) -> Episode:
        """One whole episode by key 'source/episode_id' (or by row of this version)."""
        i = self._resolve(i)
        feats = self.features(i)
        r = {c: self._column(c)[i].as_py() for c in ("instruction", "kind", "split")}
        return Episode(self.keys[i], feats, self._timestamps(i), self._actions(i), r["instruction"],
                       kind=r["kind"], fps=float(self.fps[i]), split=r["split"])

    def features(self, i: int | str) -> np.ndarray:
        """(N, T, D) float16 features of one episode, read through the chunk cache."""
        i = self._resolve(i)
        try:
            return self._rows(self._shard_of(i), int(self._start_of[i]), int(self._frames_of[i]))
        except CHUNK_ERRORS as e:
            raise self._corrupt(i, "features", e) from e

    def _corrupt(self, i: int, array: str, e: BaseException) -> StoreCorruptError:
        return StoreCorruptError(
            f"store {self.uri!r} version {self.version}: episode {self.keys[i]} (shard {self._shard_of(i)}, "
            f"{array}) cannot be read: {one_line(e)[:200]}")

    def timestamps(self, i: int | str) -> np.ndarray:
        return self._timestamps(self._resolve(i))

    def actions(self, i: int | str) -> ActionTrack | None:
        """The episode's control-rate actions and state on its frames' clock; None for human video."""
        return self._actions(self._resolve(i))

    def _timestamps(self, i: int) -> np.ndarray:
        ts = _get(self._ts, i)
        if ts is None:
            s, n = int(self._start_of[i]), int(self._frames_of[i])
            try:
                ts = self._array(self._shard_of(i), "timestamps")[s : s + n]
            except CHUNK_ERRORS as e:
                raise self._corrupt(i, "timestamps", e) from e
            _put(self._ts, i, ts)
        return ts

    def _actions(self, i: int) -> ActionTrack | None:
        if i not in self._tracks:
            s, m = int(self._action_start[i]), int(self._actions_of[i])
            track = None
            if m:
                shard = self._shard_of(i)
                try:
                    stored = self._array(shard, "state")
                    state = stored[s : s + m] if stored is not None else None
                    if state is not None and has_no_state(state):
                        state = None  # an episode without state in a shard of episodes with it
                    track = ActionTrack(self._array(shard, "action_timestamps")[s : s + m],
                                        self._array(shard, "actions")[s : s + m], state)
                except CHUNK_ERRORS as e:
                    raise self._corrupt(i, "actions", e) from e
            _put(self._tracks, i, track)
            return track
        self._tracks.move_to_end(i)
        return self._tracks[i]

    def _chunk(self, shard: str, c: int) -> np.ndarray:
        key = (shard, c)
        chunk = self._cache.get(key)
        if chunk is None:
            arr = self._array(shard, "features")
            size = arr.chunks[0]
            chunk = arr[c * size : (c + 1) * size]
            self._cache[key] = chunk
            self._cached += chunk.nbytes
            while self._cached > self._cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached -= old.nbytes
        else:
            self._cache.move_to_end(key)
        return chunk

    def _rows(self, shard: str, start: int, n: int) -> np.ndarray:
        """Feature rows [start, start+n) of a shard, assembled from whole cached chunks: a
        trainer reading episodes at random touches storage once per chunk, not per frame."""
        size = self._array(shard, "features").chunks[0]
        first, last = start // size, (start + n - 1) // size
        parts = [self._chunk(shard, c) for c in range(first, last + 1)]
        block = parts[0] if len(parts) == 1 else np.concatenate(parts)
        off = start - first * size
        return block[off : off + n]


_SMALL_CACHE = 8192  # episodes whose timestamps and actions a reader keeps (bounded: a million would not fit)


def _get(cache: OrderedDict, key: int):
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _put(cache: OrderedDict, key: int, value) -> None:
    cache[key] = value
    while len(cache) > _SMALL_CACHE:
        cache.popitem(last=False)


def _reopen(uri: str, version: str, cache_bytes: int, shared: str | None = None) -> FeatureStore:
    return FeatureStore.open(uri, version, cache_bytes=cache_bytes, shared=shared)


# What `share()` writes beside each episode's stored row, shard code and key: what a trainer's
# reader (PairReader) and its batches use. Other columns a copy asks for it reads from the index.
_SHARED = ("source", "kind", "split", "instruction", "key_hash", "frame_start", "frames", "action_start", "actions",
           "duration_s")
_SHARD_CODE = "_shard_code"
_SHARED_FROM = ("_shard_code", "_shard_names", "_start_of", "_frames_of", "_action_start", "_actions_of")  # cached


def _map_shared(path: str, uri: str, version: str) -> pa.Table | None:
    """The table `share()` wrote at `path`, memory-mapped (its buffers are the file's pages);
    None when the file is gone or was written for another store or version."""
    try:
        table = pa.ipc.open_file(pa.memory_map(path)).read_all()
    except (OSError, pa.ArrowInvalid):
        return None
    meta = table.schema.metadata or {}
    if meta.get(b"lawam_uri") != uri.encode() or meta.get(b"lawam_version") != version.encode():
        return None
    return table


def _one(table: pa.Table, name: str) -> pa.Array:
    """Column `name` as one array (a mapped table's single chunk: no copy)."""
    col = table.column(name)
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
