"""Label sets: latent-action labels stored next to the features they were computed from.

Promise (DESIGN.md, "Label sets"): one label set per LaWM checkpoint, keyed by the hash of
its weights and of every card field that changes its labels (`schemas.identity.label_set_id`);
labels of two checkpoints never mix, several sets coexist, and each is added
in a commit, incrementally — only episodes without labels of that set, or redone since.

Layout, inside the same Icechunk repository (so a store version pins features *and* labels):

    /labels/<set>/                    attrs: the LaWM it came from (card summary), k_seconds, dim
    /labels/<set>/shards/<run>/z      (rows, Z) float32, z[t] = IDM(f_t, f_{t+k}) of one episode
    /labels/<set>/shards/<run>/codes  (rows, Q) int32, vector-quantised sets only
    /labels/<set>/index/...           LABEL_INDEX_SCHEMA, append-only: key, key_hash, content_hash,
                                      index_row, shard, row_start, rows, k_frames

An episode's labels are *current* while the features they were computed from are the
episode's in the store (`index_row` is its live index row, or the content hashes match). A
redone episode (its video changed) gets a new index row and hash, so its old labels stop being
served at once, and the next labelling run redoes it — nothing derived from old features is
ever handed out as if it were new.

Like the ingest, the writer holds the store's writer lock for the whole run and publishes
in one commit: a run killed mid-way leaves no label of that run visible. What label sets share
with curation sets (the index, currency by content hash, the writer's lock, buffers and
commit) is `pipeline.store.derived`.

Labels are checked like features: a z holding NaN or inf is refused when it is put (the
model that made it is broken, so the whole run stops before anything is committed), and
`lawam verify` reads every label for finiteness. An episode's labels can be redone on
purpose (`todo(store, redo=...)`): the new rows replace the old ones in the same set.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import zarr

from pipeline.store.backend import StoreError
from pipeline.store.derived import DerivedSet, DerivedSetWriter
from pipeline.store.format import LABELS_GROUP
from pipeline.store.reader import FeatureStore
from schemas import LABEL_INDEX_SCHEMA
from schemas.errors import ConfigError

log = logging.getLogger(__name__)


class NonFiniteLabelsError(ConfigError):
    """A labelling model gave NaN or inf: the model is broken (its weights, not the episode's
    input), so the run stops before anything is committed (exit 2), naming the model."""

_CACHE_BYTES = 128 << 20  # labels a reader keeps in memory (a trainer reads each episode many times)


@dataclass(frozen=True)
class LabelSetInfo:
    id: str
    attrs: dict  # what made it: LaWM card summary, k_seconds, dim, ...
    labelled: int  # episodes with current labels in this version
    stale: int  # episodes whose labels were computed from features since redone
    episodes: int  # ingested episodes in this version

    @property
    def coverage(self) -> float:
        return self.labelled / self.episodes if self.episodes else 0.0


class LabelSet(DerivedSet):
    """One label set, read-only, at the store version it was opened with."""

    GROUP = LABELS_GROUP
    SCHEMA = LABEL_INDEX_SCHEMA
    WHAT = "label set"
    MAKE = "run `lawam label` first"

    def __init__(self, store: FeatureStore, set_id: str, group: zarr.Group):
        super().__init__(store, set_id, group)
        self.dim = int(self.attrs.get("dim", 0))
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()  # live row -> z, LRU
        self._cached = 0

    @cached_property
    def _k(self) -> np.ndarray:
        return self.table.take("k_frames", self._stored).to_numpy()

    def k_frames(self, key: str) -> int:
        return int(self._k[self._pos(key)])

    def episode(self, key: str) -> np.ndarray | None:
        """(N - k, Z) float32: z[t] for the pair (t, t + k_frames); None when the episode has no
        current labels of this set (never labelled, or redone since)."""
        row = int(self.store.rows([key])[0])
        return self.at(row) if row >= 0 else None

    def at(self, row: int) -> np.ndarray | None:
        """`episode` of the store's episode row `row` (what a trainer reads: no key looked up)."""
        i = int(self._of_row[row])
        if i < 0:
            return None
        z = self._cache.get(i)
        if z is None:
            z = self._cache[i] = self.read_rows(i, "z")
            self._cached += z.nbytes
            while self._cached > _CACHE_BYTES and len(self._cache) > 1:
                self._cached -= self._cache.popitem(last=False)[1].nbytes
        else:
            self._cache.move_to_end(i)
        return z

    def codes(self, key: str) -> np.ndarray | None:
        """(N - k, Q) int32 code indices of a vector-quantised set; None otherwise."""
        i = self._pos(key)
        if i < 0 or "codes" not in self.group[f"shards/{self._shard(i)}"]:
            return None
        return self.read_rows(i, "codes")

    def to_table(self) -> pa.Table:
        """(episode, t, z) rows of every current label, for other trainers (`--export`)."""
        keys, ts, zs = [], [], []
        for row in np.flatnonzero(self._of_row >= 0).tolist():
            z = self.at(row)
            keys.append(np.full(len(z), self.store.keys[row], dtype=object))
            ts.append(np.arange(len(z), dtype=np.int64))
            zs.append(z)
        dim = self.dim
        z = np.concatenate(zs) if zs else np.zeros((0, dim), np.float32)
        flat = pa.array(z.reshape(-1), pa.float32())
        return pa.table({
            "episode": pa.array(np.concatenate(keys) if keys else [], pa.string()),
            "t": pa.array(np.concatenate(ts) if ts else [], pa.int64()),
            "z": pa.FixedSizeListArray.from_arrays(flat, dim),
        })


def list_label_sets(store: FeatureStore) -> list[LabelSetInfo]:
    return [LabelSetInfo(ls.id, ls.attrs, ls.labelled, ls.stale, len(store)) for ls in LabelSet.list_in(store)]


class LabelWriter(DerivedSetWriter):
    """The one writer of a label set. Holds the store's writer lock from `open()` to
    `close()`; `put()` buffers, `commit()` publishes everything in one new version."""

    GROUP = LABELS_GROUP
    SCHEMA = LABEL_INDEX_SCHEMA
    WHAT = "label set"
    META = "label_set"
    ARRAYS = {
        "z": (("pair", "dim"), 8192, "latent action z of pair (t, t + k_frames)"),
        "codes": (("pair", "query"), 8192, "quantizer code per query of pair (t, t + k_frames)"),
    }

    def check_attrs(self, stored: dict, attrs: dict) -> None:
        for name in ("dim", "k_seconds"):  # a set's labels all come from one model at one gap
            if stored.get(name) not in (None, attrs.get(name)):
                raise StoreError(f"label set {self.set_id!r} in {self.uri!r} holds labels of {name} {stored[name]}; "
                                 f"{_made_by(attrs, self.set_id)} gives {attrs.get(name)}: they never share a set")

    def __init__(self, uri: str, set_id: str, attrs: dict, branch: str, lock) -> None:
        self.made_by = _made_by(attrs, set_id)  # the model writing now, for messages: its folder
        super().__init__(uri, set_id, attrs, branch, lock)

    def put(self, key: str, content_hash: str, z: np.ndarray, k_frames: int,  # type: ignore[override]
            codes: np.ndarray | None = None) -> None:
        """Buffer one episode's labels: z (N - k, Z), from the features with `content_hash`.
        A z holding NaN or inf is refused (`NonFiniteLabelsError`): nothing is buffered."""
        z = np.asarray(z, np.float32)
        if z.ndim != 2:
            raise ValueError(f"{key}: labels must be (pairs, dim), got {z.shape}")
        bad = int(z.size - np.isfinite(z).sum())
        if bad:
            raise NonFiniteLabelsError(
                f"{self.made_by} gave NaN or inf for {bad} of {z.size} latent values of episode {key}: the model "
                f"is broken (restore its weights or train it again); label set {self.set_id} is unchanged")
        start = self.append("z", z)
        if codes is not None:
            self.append("codes", np.asarray(codes, np.int32))
        super().put({"key": key, "content_hash": content_hash, "row_start": start, "rows": len(z),
                     "k_frames": int(k_frames)})


def _made_by(attrs: dict, set_id: str) -> str:
    return str((attrs.get("lam") or {}).get("dir") or set_id)

