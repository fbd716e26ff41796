"""Read access to a feature store, pinned to one version.

    store = FeatureStore.open("data/store")            # newest commit on main
    store.version                                      # record it with your training run
    store = FeatureStore.open("data/store", version=v)  # exactly that commit, later
    batch = store.sample_pairs(256, k=5, rng=0)         # (f_t, f_{t+k}) + actions between

Only committed data is visible; a reader never sees a half-written episode. Random pair
reads go through an LRU cache of decompressed chunks, so a trainer sampling pairs at
random touches storage once per chunk, not once per frame.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from pipeline.sources.base import ActionTrack
from pipeline.store.backend import StoreError, open_repo
from pipeline.store.index import read_index
from schemas import CATALOG_SCHEMA, EpisodeStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionInfo:
    id: str
    message: str
    written_at: object
    metadata: dict


@dataclass
class Episode:
    key: str
    features: np.ndarray  # (N, T, D) float16
    timestamps: np.ndarray  # (N,) float64 seconds from the episode start
    actions: ActionTrack | None
    instruction: str | None


@dataclass
class PairBatch:
    """`n` random pairs (f_t, f_{t+k}) from episodes with at least k+1 frames."""

    f_t: np.ndarray  # (n, T, D) float16
    f_tk: np.ndarray  # (n, T, D) float16
    episode: np.ndarray  # (n,) int64 row in `store.episodes()`
    t: np.ndarray  # (n,) int64 frame index of f_t within its episode
    dt: np.ndarray  # (n,) float64 seconds between the two frames
    actions: list[np.ndarray | None]  # per pair: control-rate actions in [ts_t, ts_{t+k}), None for human


class FeatureStore:
    def __init__(self, uri: str, repo, session, cache_bytes: int):
        self.uri = uri
        self._repo = repo
        self._session = session
        self.version: str = session.snapshot_id
        try:
            self.root = zarr.open_group(session.store, mode="r")
        except zarr.errors.GroupNotFoundError:
            raise StoreError(f"store {uri!r} has no committed data at {self.version}") from None
        self.attrs = dict(self.root.attrs)
        index = read_index(self.root)
        sv = index.column("store_version")
        self.index = index.set_column(index.schema.get_field_index("store_version"), "store_version",
                                      pc.if_else(pc.is_null(sv), pa.scalar(self.version), sv))
        self._ok = self.index.filter(pc.equal(self.index["status"], EpisodeStatus.OK))
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0
        self._arrays: dict[str, zarr.Array] = {}
        self._ts: dict[int, np.ndarray] = {}
        self._tracks: dict[int, ActionTrack | None] = {}
        self._slack: dict[int, float] = {}
        self._shard_of = self._ok["shard"].to_pylist()
        self._start_of = self._ok["frame_start"].to_numpy()
        self._frames_of = self._ok["frames"].to_numpy()
        self._row_of_key: dict[str, int] | None = None

    @classmethod
    def open(cls, uri: str, version: str | None = None, *, branch: str = "main",
             cache_bytes: int = 512 << 20) -> FeatureStore:
        """Open `uri` at `version` (a commit id) or at the tip of `branch`."""
        repo = open_repo(uri, create=False)
        try:
            session = (repo.readonly_session(snapshot_id=version) if version
                       else repo.readonly_session(branch=branch))
        except Exception as e:  # icechunk raises its own error types for unknown refs
            raise StoreError(f"store {uri!r} has no version {version or branch!r}: {e}") from None
        return cls(uri, repo, session, cache_bytes)

    # -- metadata ----------------------------------------------------------------------
    @property
    def encoder(self) -> dict:
        return self.attrs.get("encoder", {})

    @property
    def token_shape(self) -> tuple[int, ...]:
        return tuple(self.attrs.get("token_shape", ()))

    def versions(self) -> list[VersionInfo]:
        """Commits reachable from this version, newest first."""
        return [VersionInfo(s.id, s.message, s.written_at, dict(s.metadata))
                for s in self._repo.ancestry(snapshot_id=self.version)]

    def catalog(self) -> pa.Table:
        """Every episode this version knows of, quarantined ones included."""
        return self.index.select(CATALOG_SCHEMA.names)

    def episodes(self) -> pa.Table:
        """The ingested (status ok) episodes; row numbers index `episode()`/`sample_pairs`."""
        return self._ok

    def __len__(self) -> int:
        return self._ok.num_rows

    # -- data --------------------------------------------------------------------------
    def _array(self, shard: str, name: str) -> zarr.Array:
        key = f"{shard}/{name}"
        if key not in self._arrays:
            self._arrays[key] = self.root[f"shards/{key}"]
        return self._arrays[key]

    def _row(self, i: int) -> dict:
        return {c: self._ok[c][i].as_py() for c in ("source", "episode_id", "shard", "frame_start",
                                                      "frames", "action_start", "actions", "instruction")}

    def episode(self, i: int | str) -> Episode:
        """One whole episode by row number or by key 'source/episode_id'."""
        if isinstance(i, str):
            if self._row_of_key is None:
                keys = pc.binary_join_element_wise(self._ok["source"], self._ok["episode_id"], "/").to_pylist()
                self._row_of_key = {k: row for row, k in enumerate(keys)}
            if i not in self._row_of_key:
                raise KeyError(f"no ingested episode {i!r} in version {self.version}")
            i = self._row_of_key[i]
        r = self._row(i)
        s, n = r["frame_start"], r["frames"]
        feats = self._array(r["shard"], "features")[s : s + n]
        ts = self._timestamps(i)
        return Episode(f"{r['source']}/{r['episode_id']}", feats, ts, self._actions(i), r["instruction"])

    def _timestamps(self, i: int) -> np.ndarray:
        if i not in self._ts:
            r = self._row(i)
            self._ts[i] = self._array(r["shard"], "timestamps")[r["frame_start"] : r["frame_start"] + r["frames"]]
        return self._ts[i]

    def _actions(self, i: int) -> ActionTrack | None:
        if i not in self._tracks:
            r = self._row(i)
            s, m = r["action_start"], r["actions"]
            track = None
            if m:
                group = self.root[f"shards/{r['shard']}"]
                state = group["state"][s : s + m] if "state" in group else None
                track = ActionTrack(group["action_timestamps"][s : s + m], group["actions"][s : s + m], state)
                step = np.median(np.diff(track.timestamps)) if m > 1 else 0.0
                self._slack[i] = 0.25 * step
            self._tracks[i] = track
        return self._tracks[i]

    def _frame(self, shard: str, row: int) -> np.ndarray:
        arr = self._array(shard, "features")
        c = arr.chunks[0]
        key = (shard, row // c)
        chunk = self._cache.get(key)
        if chunk is None:
            chunk = arr[key[1] * c : (key[1] + 1) * c]
            self._cache[key] = chunk
            self._cached += chunk.nbytes
            while self._cached > self._cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached -= old.nbytes
        else:
            self._cache.move_to_end(key)
        return chunk[row - key[1] * c]

    def read_pairs(self, episode: np.ndarray, t: np.ndarray, k: int, with_actions: bool = True) -> PairBatch:
        """Pairs (f_t, f_{t+k}) at given episode rows and frame indices."""
        episode, t = np.asarray(episode, np.int64), np.asarray(t, np.int64)
        if np.any(t < 0) or np.any(t + k >= self._frames_of[episode]):
            raise IndexError(f"pair (t, t+{k}) outside its episode")
        shards, starts = self._shard_of, self._start_of
        f_t = np.stack([self._frame(shards[e], starts[e] + ti) for e, ti in zip(episode, t, strict=True)])
        f_tk = np.stack([self._frame(shards[e], starts[e] + ti + k) for e, ti in zip(episode, t, strict=True)])
        dts, acts = [], []
        for e, ti in zip(episode.tolist(), t.tolist(), strict=True):
            ts = self._timestamps(e)
            dts.append(ts[ti + k] - ts[ti])
            track = self._actions(e) if with_actions else None
            if track is not None:
                # [ts_t, ts_t+k) with a quarter control step of slack: frame pts and (often
                # float32) action timestamps disagree in the last bits.
                lo, hi = np.searchsorted(track.timestamps, np.array([ts[ti], ts[ti + k]]) - self._slack[e], side="left")
                acts.append(track.actions[lo:hi])
            else:
                acts.append(None)
        return PairBatch(f_t, f_tk, episode, t, np.asarray(dts), acts)

    def sample_pairs(self, n: int, k: int, rng: int | np.random.Generator | None = None,
                     with_actions: bool = True) -> PairBatch:
        """`n` pairs drawn uniformly over all valid (episode, t) positions."""
        rng = np.random.default_rng(rng)
        valid = np.clip(self._frames_of - k, 0, None)
        if valid.sum() == 0:
            raise ValueError(f"no episode in version {self.version} has more than k={k} frames")
        cum = np.cumsum(valid)
        pos = rng.integers(0, cum[-1], size=n)
        episode = np.searchsorted(cum, pos, side="right")
        t = pos - (cum[episode] - valid[episode])
        return self.read_pairs(episode, t, k, with_actions)
