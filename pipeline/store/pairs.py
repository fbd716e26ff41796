"""Training pairs from one pinned store version, torch-free: what every trainer reads.

    reader = PairReader(FeatureStore.open(uri, version), PairQuery(k_seconds=0.5, split="train"))
    for rows, t in reader.batch_indices(epoch=0, batch_size=256):   # index-level plan, no I/O
        batch = reader.read(rows, t)                                 # numpy dict, one read per episode

Promises (DESIGN.md, "Training"):
- `k` is in **seconds**, converted per episode at the rate it was sampled, so sources of
  different fps give pairs of the same time gap.
- The held-out split is by **episode** (a hash of its key, or the source's own split when it
  holds episodes out itself), never by frame, and is the same in every store version: keys
  are identities, rows are not.
- **Every pair once per epoch**: an epoch is a permutation of all (episode, t) pairs of the
  selection, cut into windows of consecutive episodes; windows are dealt round-robin to the
  `num_shards` readers (DataLoader workers × Ray Train ranks). The shards partition the
  epoch: no pair is read twice, none is skipped. Per-source mixing weights, when given,
  replace "once" by "in proportion" (whole episodes repeated or dropped per epoch).
- Reads are per episode (contiguous rows of a shard through the store's chunk cache), and a
  window's pairs are shuffled in memory: random order without random I/O.
- The plan is computed from the index alone, so a resumed run skips the batches it already
  consumed without reading them.
- **Curation** (a curation set named, `lawam curate`): an episode that duplicates a kept one
  is not selected (`dedup`), and a pair is served only when every frame from t to t + k is
  kept (`drop_idle`): pairs that start, end or straddle a still span are dropped, so f_{t+k}
  is never more than k seconds of kept video from f_t and no latent action has to explain a
  cut. With `all_frames`, a t is served when t .. min(t + k, last) are kept. Episodes the set
  has not curated yet (new or redone since) are served whole, with a warning.

The FeatureStore inside pickles as `(uri, version)`: a copy sent to another process reopens
exactly the version this reader was built on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.store.curation import CurationSet
from pipeline.store.labels import LabelSet
from pipeline.store.reader import EpisodeKeys, FeatureStore
from pipeline.store.table import key_hash
from schemas.errors import ConfigError

log = logging.getLogger(__name__)

HELDOUT_SPLITS = frozenset({"val", "valid", "validation", "test", "heldout", "eval"})


@dataclass(frozen=True)
class PairQuery:
    """Which pairs to read and what comes with them (the fields of `schemas.PairsConfig`)."""

    k_seconds: float = 0.5  # gap between f_t and f_{t+k}
    horizon: int = 5  # action chunk length H
    action_rate: float | None = 10.0  # Hz of the chunk; None = each episode's control rate
    sources: tuple[str, ...] = ()  # empty = every source
    kinds: tuple[str, ...] = ()  # empty = robot and human
    split: str = "train"  # train | heldout | all
    heldout_fraction: float = 0.1
    weights: dict[str, float] = field(default_factory=dict)  # per-source mixing; empty = by size
    seed: int = 0
    label_set: str | None = None  # serve labels of this set (stage 2)
    # Every frame is a t, the last k seconds included (f_{t+k} is then the episode's last
    # frame and no label is served): a policy acts at every frame, not only where a pair fits.
    all_frames: bool = False
    curation: str | None = None  # a curation set of the store ('cur-...'): drop_idle and dedup apply
    drop_idle: bool = True  # skip pairs touching the set's still (static / idle) spans
    dedup: bool = True  # of each duplicate group, read only the episode the set keeps
    # Frames between f_t and f_{t+k} served too (`f_mid`, evenly spaced, rounded to frames):
    # what a multi-frame inverse-dynamics model sees.
    between: int = 0

    @classmethod
    def from_config(cls, cfg, **overrides) -> PairQuery:
        """From a `schemas.training.PairsConfig` (or anything with the same fields)."""
        kw = {"k_seconds": cfg.k_seconds, "horizon": cfg.horizon, "action_rate": cfg.action_rate,
              "sources": tuple(cfg.sources), "kinds": tuple(cfg.kinds), "heldout_fraction": cfg.heldout_fraction,
              "weights": dict(cfg.weights), "seed": cfg.seed, "curation": cfg.curation,
              "drop_idle": cfg.drop_idle, "dedup": cfg.dedup}
        return cls(**{**kw, **overrides})


def is_heldout(key: str, split: str | None, fraction: float, source_splits: bool = True) -> bool:
    """Deterministic by episode key (stable across versions and machines). When the episode's
    source holds out episodes of its own (`source_splits`: some are "val", "test", ...), its
    split decides instead. A source whose only split is "train" (LeRobot writes
    `splits: {train: 0:N}` by default) is split by key: honouring it would hold out nothing."""
    if source_splits and split:
        return split.lower() in HELDOUT_SPLITS
    return key_hash(key) / 2**64 < fraction


def heldout_mask(hashes: np.ndarray, sources: np.ndarray, splits: pa.Array, fraction: float) -> np.ndarray:
    """`is_heldout` of many episodes at once, from the index's `key_hash`, source codes and
    splits: the same answer, vectorised (a million episodes in milliseconds)."""
    named = pc.fill_null(splits, "").cast(pa.string())
    held_split = pc.is_in(pc.utf8_lower(named), value_set=pa.array(sorted(HELDOUT_SPLITS))).to_numpy(
        zero_copy_only=False)
    has_split = pc.not_equal(named, "").to_numpy(zero_copy_only=False)
    own = np.isin(sources, np.unique(sources[held_split]))  # sources that hold episodes out themselves
    by_key = hashes.astype(np.float64) / 2**64 < fraction
    return np.where(own & has_split, held_split, by_key)


def k_frames_for(fps: np.ndarray | float, k_seconds: float) -> np.ndarray:
    """The gap in frames at each episode's rate (at least one frame)."""
    return np.maximum(1, np.rint(np.asarray(fps, np.float64) * k_seconds)).astype(np.int64)


def _slack(track, action_rate: float | None) -> float:
    # Frame pts and float32 action stamps differ in the last bits.
    return 0.25 / (track.rate or action_rate or 1.0)


def action_chunks(track, t0: np.ndarray, horizon: int, action_rate: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The action chunk starting at each frame time `t0` (n,) of an `ActionTrack`: (n, H, A)
    actions at `action_rate` (None = the track's own rate) and the (n, H) mask of steps the
    track covers (steps past its end are zero and masked, never made up)."""
    rate = action_rate or track.rate or 1.0
    ats, slack = track.timestamps, _slack(track, action_rate)
    tau = np.asarray(t0)[:, None] + np.arange(horizon)[None, :] / rate  # (n, H) chunk step times
    idx = np.searchsorted(ats, tau - slack, side="left")
    valid = (idx < len(ats)) & (tau <= ats[-1] + slack)
    idx = np.minimum(idx, len(ats) - 1)
    return np.where(valid[..., None], track.actions[idx], 0.0).astype(np.float32), valid


class PairReader:
    """Selects episodes of a store version, plans epochs of pairs, reads them as numpy batches."""

    def __init__(self, store: FeatureStore, query: PairQuery, rows: np.ndarray | None = None):
        """`rows`: only these episode rows of the store (labelling the episodes it lacks), read
        as those rows alone; with split "all" only, since a split by source is decided over
        all of a source's episodes."""
        if query.split not in ("train", "heldout", "all"):
            raise ConfigError(f"split {query.split!r}: use train, heldout or all")
        if rows is not None and query.split != "all":
            raise ValueError("PairReader(rows=...) reads split 'all' only")
        self.store, self.query = store, query
        # Columns as Arrow arrays and codes: no Python object per episode (a million of them).
        names_read = ["source", "kind", "split", "key_hash"]
        if rows is None:
            base = None
            table = store.episodes(names_read, keep=False)
        else:
            base = np.unique(np.asarray(rows, np.int64))
            table = pa.table({name: store.values(name, base) for name in names_read})
        source = pc.dictionary_encode(table["source"]).combine_chunks()
        names = source.dictionary.to_pylist()
        codes = source.indices.to_numpy(zero_copy_only=False)
        keep = np.ones(table.num_rows, bool)
        if query.sources:
            unknown = set(query.sources) - set(names)
            if unknown:
                raise ConfigError(f"no source {sorted(unknown)!r} in store version {store.version}; "
                                  f"it has {sorted(set(names))!r}")
            keep &= np.isin(codes, [names.index(s) for s in query.sources])
        if query.kinds:
            keep &= pc.is_in(table["kind"], value_set=pa.array(list(query.kinds))).to_numpy(zero_copy_only=False)
        self.curation = CurationSet.open(store, query.curation) if query.curation else None
        if self.curation is not None and query.dedup:
            dropped = store.rows(self.curation.dropped_duplicates().tolist())
            dropped = dropped[dropped >= 0]
            if base is None:
                keep[dropped] = False
            else:  # among `rows`
                keep &= ~np.isin(base, dropped)
        if query.split != "all":
            held = heldout_mask(table["key_hash"].to_numpy(), codes, table["split"], query.heldout_fraction)
            keep &= held if query.split == "heldout" else ~held
        sel = np.flatnonzero(keep)
        self.rows = sel if base is None else base[sel]  # rows of the store version
        self.sources = np.array(names + [None], dtype=object)[codes[sel]]  # one str per source, shared
        self.robot = pc.equal(table["kind"], "robot").to_numpy(zero_copy_only=False)[sel]
        self.k = k_frames_for(store.fps[self.rows], query.k_seconds)
        frames = store.frames[self.rows]
        self.n_pairs = frames.astype(np.int64) if query.all_frames else np.clip(frames - self.k, 0, None)
        self._ranges: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.uncurated = 0  # selected episodes the curation set has no current rows for
        if self.curation is not None:
            self.uncurated = int((~self.curation.has_rows(self.rows)).sum())
            if self.uncurated:
                log.warning("%d of %d selected episodes have no current rows in curation set %s (new or redone "
                            "since it ran): served whole; run `lawam curate`", self.uncurated, len(self.keys),
                            query.curation)
            if query.drop_idle:
                self._ranges = self._kept_ranges(frames)
        self._labels = LabelSet.open(store, query.label_set) if query.label_set else None
        self.action_dim, self.state_dim = self._dims()

    def __len__(self) -> int:
        """Pairs per epoch (without mixing weights)."""
        return int(self.n_pairs.sum())

    def require_pairs(self) -> None:
        """ConfigError unless the selection holds a pair: a gap `k_seconds` longer than every
        selected episode, or a selection of no episode, is a setting to change, said before a
        trainer writes anything."""
        if len(self):
            return
        where = f"store version {self.store.version}"
        if not len(self.rows):
            raise ConfigError(f"no episode of {where} in the {self.query.split} selection "
                              f"(pairs.sources {self.query.sources or 'all'}, kinds {self.query.kinds or 'all'}): "
                              "widen the selection or ingest more episodes")
        frames, fps = self.store.frames[self.rows], self.store.fps[self.rows]
        longest = float(np.max(np.divide(frames, fps, out=np.zeros(len(fps)), where=fps > 0)))
        kept = f" once curation set {self.curation.id} drops its spans" if self.curation is not None else ""
        raise ConfigError(f"pairs.k_seconds {self.query.k_seconds:g}: no pair in the {self.query.split} selection"
                          f"{kept}, whose longest episode lasts {longest:.2f} s ({len(self.rows)} episodes of "
                          f"{where}); use a k_seconds shorter than the episodes")
    def _kept_ranges(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The t of each selected episode whose frames t .. t + k avoid the curation set's still
        spans, as runs: (first run of each episode (E+1,), run starts t0 (R,), pairs before
        each run (R+1,)); `n_pairs` becomes the number of such t. Index-sized, no features read."""
        spans = self.curation.spans_table
        by_key: dict[str, list[tuple[int, int]]] = {}
        for key, s, e in zip(spans["key"].to_pylist(), spans["start"].to_pylist(), spans["end"].to_pylist(),
                             strict=True):
            by_key.setdefault(key, []).append((s, e))
        first, t0, length = [0], [], []
        for e, key in enumerate(self.keys.tolist()):
            n, k = int(frames[e]), int(self.k[e])
            cuts = sorted(by_key.get(key, ()))
            if not cuts:
                t0.append(0)
                length.append(int(self.n_pairs[e]))
            else:
                a = 0
                for s, end in [*cuts, (n, n)]:  # kept frames [a, s), then a span [s, end)
                    b = s
                    last = b if (self.query.all_frames and b == n) else b - k  # t < last keeps t + k < b
                    if last > a:
                        t0.append(a)
                        length.append(last - a)
                    a = max(a, end)
            first.append(len(t0))
        cum = np.concatenate([[0], np.cumsum(length, dtype=np.int64)])
        first_arr = np.asarray(first, np.int64)
        self.n_pairs = cum[first_arr[1:]] - cum[first_arr[:-1]]
        return first_arr, np.asarray(t0, np.int64), cum

    def pair_t(self, e: np.ndarray | int, j: np.ndarray) -> np.ndarray:
        """The frame t of selected episode `e`'s j-th pair (j < n_pairs[e])."""
        if self._ranges is None:
            return j
        first, t0, cum = self._ranges
        g = cum[first[e]] + j
        r = np.searchsorted(cum, g, side="right") - 1
        return t0[r] + (g - cum[r])

    @property
    def label_dim(self) -> int:
        return self._labels.dim if self._labels is not None else 0

    def _dims(self) -> tuple[int, int]:
        for i in np.flatnonzero(self.robot):
            track = self.store.actions(int(self.rows[i]))
            if track is not None:
                return track.actions.shape[1], 0 if track.state is None else track.state.shape[1]
        return 0, 0

    # -- planning (index only, no I/O) -------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        """Selected-episode indices in this epoch's order (repeated or dropped by mixing weights)."""
        rng = np.random.default_rng([self.query.seed, epoch])
        eps = np.flatnonzero(self.n_pairs > 0)
        if self.query.weights:
            eps = self._mix(eps, rng)
        return rng.permutation(eps)

    def _mix(self, eps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        w = self.query.weights
        missing = set(self.sources[eps].tolist()) - set(w)
        if missing:
            raise ConfigError(f"weights name no weight for sources {sorted(missing)!r}; give every source one")
        total_w = sum(w[s] for s in set(self.sources[eps].tolist()))
        total = self.n_pairs[eps].sum()
        out = []
        for s in sorted(set(self.sources[eps].tolist())):
            mine = eps[self.sources[eps] == s]
            ratio = (w[s] / total_w) * total / max(self.n_pairs[mine].sum(), 1)
            whole, frac = int(np.floor(ratio)), ratio - np.floor(ratio)
            out.extend([mine] * whole)
            out.append(rng.choice(mine, size=int(round(frac * len(mine))), replace=False))
        return np.concatenate(out) if out else eps[:0]

    def windows(self, epoch: int, shard: int = 0, num_shards: int = 1,
                window_pairs: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This shard's windows of one epoch, each (episode index, t) shuffled within itself."""
        order = self.epoch_order(epoch)
        counts = self.n_pairs[order]
        total = int(counts.sum())
        if total == 0:
            return
        size = max(1, min(window_pairs, -(-total // num_shards)))
        cum = np.concatenate([[0], np.cumsum(counts)])
        for w in range(shard, -(-total // size), num_shards):
            lo, hi = w * size, min((w + 1) * size, total)
            first, last = np.searchsorted(cum, lo, "right") - 1, np.searchsorted(cum, hi, "left")
            eps, ts = [], []
            for j in range(first, last):
                a, b = max(lo, cum[j]) - cum[j], min(hi, cum[j + 1]) - cum[j]
                eps.append(np.full(b - a, order[j], np.int64))
                ts.append(np.arange(a, b, dtype=np.int64))
            e, t = np.concatenate(eps), np.concatenate(ts)
            t = self.pair_t(e, t)
            perm = np.random.default_rng([self.query.seed, epoch, w]).permutation(len(e))
            yield e[perm], t[perm]

    def batch_indices(self, batch_size: int, *, epoch: int = 0, epochs: int | None = 1, shard: int = 0,
                      num_shards: int = 1, window_pairs: int = 8192) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(epoch, episode index, t) batches of this shard, epochs after epochs (None = forever).
        The last batch of an epoch may be short; batches never span two epochs."""
        self.require_pairs()
        e = epoch
        while epochs is None or e < epoch + epochs:
            buf_e: list[np.ndarray] = []
            buf_t: list[np.ndarray] = []
            n = 0
            for we, wt in self.windows(e, shard, num_shards, window_pairs):
                buf_e.append(we)
                buf_t.append(wt)
                n += len(we)
                if n >= batch_size:
                    all_e, all_t = np.concatenate(buf_e), np.concatenate(buf_t)
                    cut = (n // batch_size) * batch_size
                    for s in range(0, cut, batch_size):
                        yield e, all_e[s : s + batch_size], all_t[s : s + batch_size]
                    buf_e, buf_t, n = [all_e[cut:]], [all_t[cut:]], n - cut
            if n:
                yield e, np.concatenate(buf_e), np.concatenate(buf_t)
            e += 1

    # -- reading -----------------------------------------------------------------------
    def read(self, eps: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        """The batch at (selected-episode index, t): features, gap, state, action chunk, labels."""
        n, q = len(eps), self.query
        T = self.store.token_shape
        out = {
            "f_t": np.empty((n, *T), np.float16), "f_tk": np.empty((n, *T), np.float16),
            "dt": np.zeros(n, np.float32), "t": t.astype(np.int64),
            "episode": self.store.keys[self.rows[eps]], "source": self.sources[eps],
            "instruction": self.instructions(eps),
            "robot": self.robot[eps].copy(),
            "state_t": np.zeros((n, self.state_dim), np.float32), "state_tk": np.zeros((n, self.state_dim), np.float32),
            "state_mask": np.zeros(n, bool),
            "actions": np.zeros((n, q.horizon, self.action_dim), np.float32),
            "action_mask": np.zeros((n, q.horizon), bool),
        }
        if q.between:
            out["f_mid"] = np.empty((n, q.between, *T), np.float16)
        if self._labels is not None:
            out["label"] = np.zeros((n, self._labels.dim), np.float32)
            out["label_mask"] = np.zeros(n, bool)
        for e in np.unique(eps).tolist():
            sel = np.flatnonzero(eps == e)
            self._fill(out, sel, e, t[sel])
        return out

    def _fill(self, out: dict, sel: np.ndarray, e: int, t: np.ndarray) -> None:
        row, k = int(self.rows[e]), int(self.k[e])
        feats, ts = self.store.features(row), self.store.timestamps(row)
        tk = np.minimum(t + k, len(feats) - 1)  # only all_frames reaches past the end
        out["f_t"][sel], out["f_tk"][sel] = feats[t], feats[tk]
        for i in range(self.query.between):
            step = int(np.rint(k * (i + 1) / (self.query.between + 1)))
            out["f_mid"][sel, i] = feats[np.minimum(t + step, len(feats) - 1)]
        out["dt"][sel] = ts[tk] - ts[t]
        track = self.store.actions(row) if self.robot[e] else None
        if track is not None and len(track.timestamps):
            self._fill_actions(out, sel, track, ts[t], ts[tk])
        if self._labels is not None:
            z = self._labels.at(row)
            if z is not None:
                ok = (t < len(z)) & (t + k < len(feats))
                out["label"][sel[ok]] = z[t[ok]]
                out["label_mask"][sel[ok]] = True

    def _fill_actions(self, out: dict, sel: np.ndarray, track, t0: np.ndarray, t1: np.ndarray) -> None:
        A, S = self.action_dim, self.state_dim
        if track.actions.shape[1] != A or (track.state is not None and track.state.shape[1] != S):
            raise ConfigError(f"episode actions/state of shape {track.actions.shape[1:]}/"
                              f"{None if track.state is None else track.state.shape[1:]} differ from the selection's "
                              f"({A},)/({S},): select sources with one action space (pairs.sources)")
        out["actions"][sel], out["action_mask"][sel] = action_chunks(track, t0, self.query.horizon,
                                                                     self.query.action_rate)
        if track.state is not None and S:
            ats, slack = track.timestamps, _slack(track, self.query.action_rate)
            i0 = np.minimum(np.searchsorted(ats, t0 - slack, side="left"), len(ats) - 1)
            i1 = np.minimum(np.searchsorted(ats, t1 - slack, side="left"), len(ats) - 1)
            out["state_t"][sel], out["state_tk"][sel] = track.state[i0], track.state[i1]
            out["state_mask"][sel] = True

    @cached_property
    def keys(self) -> EpisodeKeys:
        """The selected episodes' keys: `keys[e]` of selected episode e (built when first asked)."""
        return EpisodeKeys(self.store.keys.arrow.take(pa.array(self.rows, pa.int64())))

    def instructions(self, eps: np.ndarray) -> np.ndarray:
        """The instructions of selected episodes `eps` (str or None each)."""
        column = self.store.episodes(["instruction"])["instruction"]
        return column.take(pa.array(self.rows[eps], pa.int64())).to_numpy(zero_copy_only=False)

    def index(self, key: str) -> int:
        """The selected-episode index of the episode `key` (KeyError when not selected)."""
        return int(self.indices([key])[0])

    def indices(self, keys: list[str]) -> np.ndarray:
        """`index` of many keys at once."""
        rows = self.store.rows(keys)
        at = np.searchsorted(self.rows, rows)
        at = np.minimum(at, max(len(self.rows) - 1, 0))
        found = (rows >= 0) & (self.rows[at] == rows) if len(self.rows) else np.zeros(len(keys), bool)
        if not found.all():
            key = keys[int(np.flatnonzero(~found)[0])]
            raise KeyError(f"episode {key!r} is not in this selection of version {self.store.version}")
        return at

    def episode_features(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(f_t, f_tk), each (n, T, D) float16: every pair of one selected episode in order of t,
        features only (labelling: the same pairs `read` serves a trainer, without the rest)."""
        feats = self.store.features(int(self.rows[e]))
        n, k = int(self.n_pairs[e]), int(self.k[e])
        if self.query.all_frames or self._ranges is not None:
            t = self.pair_t(e, np.arange(n))
            return feats[t], feats[np.minimum(t + k, len(feats) - 1)]
        return feats[:n], feats[k : k + n]

    def feature_stats(self, max_frames: int = 50_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std (D,) of the selection's features, over frames and tokens,
        from whole episodes in random order until `max_frames` frames are seen."""
        rng = np.random.default_rng(seed)
        s1 = s2 = 0.0
        count, seen = 0, 0
        for e in rng.permutation(len(self.rows)):
            f = self.store.features(int(self.rows[e])).astype(np.float64)
            f = f.reshape(-1, f.shape[-1])  # frames x tokens, D
            s1, s2 = s1 + f.sum(0), s2 + (f * f).sum(0)
            count += len(f)
            seen += int(self.store.frames[int(self.rows[e])])
            if seen >= max_frames:
                break
        if not count:
            raise ConfigError("no frames in the selection to compute feature statistics from")
        mean = s1 / count
        std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
        return mean.astype(np.float32), std.astype(np.float32)
