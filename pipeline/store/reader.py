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
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from pipeline.errors import one_line
from pipeline.store.backend import StoreError, open_repo, unknown_version
from pipeline.store.catalog_file import catalog_table, fill_store_version
from pipeline.store.format import has_no_state
from pipeline.store.index import read_index
from schemas import EpisodeStatus
from schemas.errors import ResourceError
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


def store_commit_at(repo, snapshot_id: str) -> str:
    """The newest commit at or before `snapshot_id` that wrote the episode index (a StoreWriter
    commit: its metadata has `lawam_run`): the commit that added the index rows whose
    `store_version` is empty. Label commits do not touch the index, so they are skipped."""
    for snap in repo.ancestry(snapshot_id=snapshot_id):
        if "lawam_run" in (snap.metadata or {}):
            return snap.id
    return snapshot_id


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


class FeatureStore:
    """One pinned version of a store. Picklable: a copy sent to a DataLoader worker, a Ray
    task or a subprocess reopens `(uri, version)` there, with an empty cache of its own."""

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
        index = read_index(self.root)
        if index.num_rows and index["store_version"].null_count:
            index = fill_store_version(index, store_commit_at(repo, self.version))
        self.index = index
        self._ok = self.index.filter(pc.equal(self.index["status"], EpisodeStatus.OK))
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0
        self._arrays: dict[str, zarr.Array] = {}
        self._ts: dict[int, np.ndarray] = {}
        self._tracks: dict[int, ActionTrack | None] = {}
        self._shard_of = self._ok["shard"].to_pylist()
        self._start_of = self._ok["frame_start"].to_numpy()
        self._frames_of = self._ok["frames"].to_numpy()
        dur = self._ok["duration_s"].to_numpy()
        self._fps_of = np.divide(self._frames_of, dur, out=np.zeros(len(dur)), where=dur > 0)
        self.keys = np.array(pc.binary_join_element_wise(self._ok["source"], self._ok["episode_id"], "/")
                             .to_pylist(), dtype=object)
        self._row_of_key = {k: row for row, k in enumerate(self.keys)}

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

    def catalog(self) -> pa.Table:
        """Every episode this version knows of, quarantined ones included."""
        return catalog_table(self.index)

    def episodes(self) -> pa.Table:
        """The ingested (status ok) episodes; row i is the episode `keys[i]`."""
        return self._ok

    def __len__(self) -> int:
        return self._ok.num_rows

    def row(self, key: str) -> int:
        """Row of an ingested episode in this version (rows differ between versions, keys do not)."""
        try:
            return self._row_of_key[key]
        except KeyError:
            raise KeyError(f"no ingested episode {key!r} in version {self.version}") from None

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

    def _row(self, i: int) -> dict:
        return {c: self._ok[c][i].as_py() for c in ("source", "episode_id", "shard", "frame_start", "frames",
                                                      "action_start", "actions", "instruction", "kind", "split")}

    def _resolve(self, i: int | str) -> int:
        return self.row(i) if isinstance(i, str) else int(i)

    def episode(self, i: int | str) -> Episode:
        """One whole episode by key 'source/episode_id' (or by row of this version)."""
        i = self._resolve(i)
        r = self._row(i)
        feats = self.features(i)
        return Episode(self.keys[i], feats, self._timestamps(i), self._actions(i), r["instruction"],
                       kind=r["kind"], fps=float(self.fps[i]), split=r["split"])

    def features(self, i: int | str) -> np.ndarray:
        """(N, T, D) float16 features of one episode, read through the chunk cache."""
        i = self._resolve(i)
        try:
            return self._rows(self._shard_of[i], int(self._start_of[i]), int(self._frames_of[i]))
        except CHUNK_ERRORS as e:
            raise self._corrupt(i, "features", e) from e

    def _corrupt(self, i: int, array: str, e: BaseException) -> StoreCorruptError:
        return StoreCorruptError(
            f"store {self.uri!r} version {self.version}: episode {self.keys[i]} (shard {self._shard_of[i]}, "
            f"{array}) cannot be read: {one_line(e)[:200]}")

    def timestamps(self, i: int | str) -> np.ndarray:
        return self._timestamps(self._resolve(i))

    def actions(self, i: int | str) -> ActionTrack | None:
        """The episode's control-rate actions and state on its frames' clock; None for human video."""
        return self._actions(self._resolve(i))

    def _timestamps(self, i: int) -> np.ndarray:
        if i not in self._ts:
            s, n = int(self._start_of[i]), int(self._frames_of[i])
            try:
                self._ts[i] = self._array(self._shard_of[i], "timestamps")[s : s + n]
            except CHUNK_ERRORS as e:
                raise self._corrupt(i, "timestamps", e) from e
        return self._ts[i]

    def _actions(self, i: int) -> ActionTrack | None:
        if i not in self._tracks:
            r = self._row(i)
            s, m = r["action_start"], r["actions"]
            track = None
            if m:
                group = self.root[f"shards/{r['shard']}"]
                try:
                    state = group["state"][s : s + m] if "state" in group else None
                    if state is not None and has_no_state(state):
                        state = None  # an episode without state in a shard of episodes with it
                    track = ActionTrack(group["action_timestamps"][s : s + m], group["actions"][s : s + m], state)
                except CHUNK_ERRORS as e:
                    raise self._corrupt(i, "actions", e) from e
            self._tracks[i] = track
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


def _reopen(uri: str, version: str, cache_bytes: int) -> FeatureStore:
    return FeatureStore.open(uri, version, cache_bytes=cache_bytes)
