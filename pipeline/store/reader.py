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

import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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

    Opening reads the few index columns that locate episodes (numbers, tens of MB at a million
    episodes); other columns (`episodes(columns)`, `keys`, `catalog()`) are read when asked."""

    def __init__(self, uri: str, repo, session, cache_bytes: int, pinned: bool = False):
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
        ok = self._index.live_mask()
        ok &= pc.equal(self._index.column("status"), str(EpisodeStatus.OK)).to_numpy(zero_copy_only=False)
        self._pos = np.flatnonzero(ok)  # stored index row of each episode row
        self._columns: dict[str, pa.Array] = {}
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0
        self._arrays: dict[str, zarr.Array] = {}
        self._ts: OrderedDict[int, np.ndarray] = OrderedDict()  # the newest _SMALL_CACHE episodes' ...
        self._tracks: OrderedDict[int, ActionTrack | None] = OrderedDict()  # ... timestamps and actions
        shards = pc.dictionary_encode(self._index.column("shard").fill_null("")) if self._index.rows else None
        self._shard_code = shards.indices.to_numpy(zero_copy_only=False)[self._pos] if shards else np.zeros(0, int)
        self._shard_names = shards.dictionary.to_pylist() if shards else []
        self._start_of = self._numbers("frame_start")
        self._frames_of = self._numbers("frames")
        self._action_start = self._numbers("action_start")
        self._actions_of = self._numbers("actions")
        dur = self._numbers("duration_s")
        self._fps_of = np.divide(self._frames_of, dur, out=np.zeros(len(dur)), where=dur > 0)
        self._keys: EpisodeKeys | None = None
        self._lookup: KeyLookup | None = None

    def _numbers(self, name: str) -> np.ndarray:
        return self._index.column(name).to_numpy()[self._pos]

    def _column(self, name: str, keep: bool = True) -> pa.Array:
        """Index column `name` over the episode rows, read on first use (and kept if `keep`)."""
        if name in self._columns:
            return self._columns[name]
        if name == "store_version":
            col = self._index.store_versions(self._pos)
        else:
            col = self._index.column(name).take(pa.array(self._pos, pa.int64()))
        if keep:
            self._columns[name] = col
        return col

    def _shard_of(self, i: int) -> str:
        return self._shard_names[self._shard_code[i]]

    @classmethod
    def open(cls, uri: str, version: str | None = None, *, branch: str = "main",
             cache_bytes: int = 512 << 20) -> FeatureStore:
        """Open `uri` at `version` (a commit id or a tag) or at the tip of `branch`."""
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
        return cls(uri, repo, session, cache_bytes, pinned=version is not None)

    def __reduce__(self):
        # Reopen by (uri, version) wherever it is unpickled: sessions and caches stay behind.
        return (_reopen, (self.uri, self.version, self._cache_bytes))

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

    @property
    def keys(self) -> EpisodeKeys:
        """Row i's episode key, 'source/episode_id' (read on first use)."""
        if self._keys is None:
            self._keys = EpisodeKeys(episode_keys(self._column("source", False), self._column("episode_id", False)))
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
    def _array(self, shard: str, name: str) -> zarr.Array:
        key = f"{shard}/{name}"
        if key not in self._arrays:
            self._arrays[key] = self.root[f"shards/{key}"]
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
                group = self.root[f"shards/{self._shard_of(i)}"]
                try:
                    state = group["state"][s : s + m] if "state" in group else None
                    if state is not None and has_no_state(state):
                        state = None  # an episode without state in a shard of episodes with it
                    track = ActionTrack(group["action_timestamps"][s : s + m], group["actions"][s : s + m], state)
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


def _reopen(uri: str, version: str, cache_bytes: int) -> FeatureStore:
    return FeatureStore.open(uri, version, cache_bytes=cache_bytes)
