"""Curation sets: what `lawam curate` found in the stored features, stored beside them.

Promise (DESIGN.md, "Curation"): one curation set per curation config (keyed by the config's
hash and the store's encoder identity, `schemas.identity.curation_set_id`), added to in
commits, incrementally — only episodes without current rows, or redone since — naming the
store version it scored. Nothing is deleted from the store: a set says what training skips.

Layout (the shared part is `pipeline.store.derived`):

    /curation/<set>/                      attrs: config, encoder, per-source motion scale, centre
    /curation/<set>/shards/<run>/motion   (frames,) float16 standardised motion of every frame
    /curation/<set>/shards/<run>/embedding (episodes, E) float16 unit-length episode embeddings
    /curation/<set>/index/...             CURATION_INDEX_SCHEMA (append-only, as a label set's): where
                                          an episode's rows are, its duplicate group, its dropped
                                          frames by reason
    /curation/<set>/spans/...             CURATION_SPANS_SCHEMA (append-only; an episode's spans are
                                          superseded together): still spans [start, end) + reason
    /curation/<set>/centre/{mean,std}     (D,) the per-channel standardisation before embedding

Decisions, as the dataset layer applies them (`pipeline.store.pairs`): an episode in a duplicate
group that is not the group's kept member is dropped whole; a span's frames are dropped. The
kept member of a group is its earliest-curated one (`seq`), so a later copy never displaces
what earlier training runs saw.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from pipeline.store import table
from pipeline.store.backend import StoreError
from pipeline.store.derived import DerivedSet, DerivedSetWriter
from pipeline.store.format import CURATION_GROUP, SPANS
from pipeline.store.reader import FeatureStore
from schemas.tables import CURATION_INDEX_SCHEMA, CURATION_SPANS_SCHEMA

REASONS = ("static", "idle")  # why a span is dropped; a whole episode may also be a "duplicate"


class CurationSet(DerivedSet):
    """One curation set, read-only, at the store version it was opened with."""

    GROUP = CURATION_GROUP
    SCHEMA = CURATION_INDEX_SCHEMA
    WHAT = "curation set"
    MAKE = "run `lawam curate` first"

    def __init__(self, store: FeatureStore, set_id: str, group: zarr.Group):
        super().__init__(store, set_id, group)
        spans = spans_table(group).read()
        self.spans_table = spans.filter(pc.is_in(spans["key"], value_set=self.keys.arrow.cast(pa.string())))
        self._group = self.table.take("group", self._stored)
        self._sim = self.table.take("similarity", self._stored)

    @property
    def config(self) -> dict:
        return dict(self.attrs.get("config", {}))

    def group_of(self, key: str) -> str | None:
        """The key of the kept episode of `key`'s duplicate group; None when in no group (or not curated)."""
        i = self._pos(key)
        return None if i < 0 else self._group[i].as_py()

    def duplicate_of(self, key: str) -> str | None:
        """The episode `key` duplicates, when training drops it as a duplicate; else None."""
        g = self.group_of(key)
        return g if g is not None and g != key else None

    def dropped_duplicates(self) -> np.ndarray:
        """Keys of the current episodes that duplicate a kept one (training skips them)."""
        cur = self.current
        dup = pc.and_(pc.is_valid(cur["group"]), pc.not_equal(cur["group"], cur["key"]))
        return np.array(cur["key"].filter(pc.fill_null(dup, False)).to_pylist(), dtype=object)

    def similarity(self, key: str) -> float | None:
        i = self._pos(key)
        return None if i < 0 else self._sim[i].as_py()

    def spans(self, key: str) -> list[tuple[int, int, str]]:
        """The still spans [start, end) of `key` (frames), with their reasons."""
        rows = self.spans_table.filter(pc.equal(self.spans_table["key"], key))
        return list(zip(rows["start"].to_pylist(), rows["end"].to_pylist(), rows["reason"].to_pylist(), strict=True))

    def motion(self, key: str) -> np.ndarray | None:
        """(frames,) float16: each frame's motion in units of its source's typical motion."""
        i = self._pos(key)
        return None if i < 0 else self.read_rows(i, "motion")

    def embeddings(self) -> tuple[list[str], np.ndarray]:
        """(keys, (n, E) float32) of every current episode."""
        cur = self.current
        return cur["key"].to_pylist(), read_embeddings(self.group, cur, int(self.attrs.get("dim", 0)))


def spans_table(group: zarr.Group) -> table.Table:
    """The spans table of a curation set's group (either layout)."""
    return table.Table(group.get(SPANS), CURATION_SPANS_SCHEMA)


def read_embeddings(group: zarr.Group, rows: pa.Table, dim: int) -> np.ndarray:
    """(len(rows), dim) float32: the embeddings of these index rows, read a shard at a time."""
    shards, at = np.array(rows["shard"].to_pylist(), dtype=object), rows["emb_row"].to_numpy()
    out = np.zeros((rows.num_rows, dim), np.float32)
    for shard in sorted(set(shards.tolist())):
        sel = np.flatnonzero(shards == shard)
        out[sel] = group[f"shards/{shard}/embedding"][:][at[sel]]
    return out


def list_curation_sets(store: FeatureStore) -> list[CurationSet]:
    return CurationSet.list_in(store)


class CurationWriter(DerivedSetWriter):
    """The one writer of a curation set (holds the store's writer lock until closed)."""

    GROUP = CURATION_GROUP
    SCHEMA = CURATION_INDEX_SCHEMA
    WHAT = "curation set"
    META = "curation_set"
    ARRAYS = {
        "motion": (("frame",), 65536, "each frame's motion: the smaller change of its features to the frames "
                   "gap_seconds before and after, over its source's typical motion (attrs 'sources')"),
        "embedding": (("episode", "dim"), 4096, "unit-length episode embedding (pooled standardised features, "
                      "randomly projected); cosine >= duplicates.threshold makes two episodes duplicates"),
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._spans: dict[str, list[tuple[int, int, str]]] = {}
        seqs = self.index["seq"]
        self.next_seq = int(pc.max(seqs).as_py()) + 1 if len(seqs) else 0

    def check_attrs(self, stored: dict, attrs: dict) -> None:
        if stored.get("config") != attrs.get("config"):
            raise StoreError(f"curation set {self.set_id!r} in {self.uri!r} was made with another config "
                             f"({stored.get('config')!r}); its id names the config: use a new one")

    @property
    def centre(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, std) the set standardises features with before embedding; None until set."""
        if "centre" not in self.group:
            return None
        return self.group["centre/mean"][:], self.group["centre/std"][:]

    def embeddings(self, rows: pa.Table) -> np.ndarray:
        """The committed embeddings of these index rows (`read_embeddings`)."""
        return read_embeddings(self.group, rows, int(dict(self.group.attrs).get("dim", 0)))

    def set_centre(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Fixed once, when the set is made: every later embedding is comparable with the first."""
        centre = self.group.require_group("centre")
        for name, value in (("mean", mean), ("std", std)):
            centre.create_array(name, shape=value.shape, dtype=np.float32, compressors=[],
                                dimension_names=("channel",))[...] = value

    def put_episode(self, key: str, content_hash: str, motion: np.ndarray, embedding: np.ndarray,
                    spans: list[tuple[int, int, str]]) -> None:
        """Buffer a scored episode: its motion (frames,), embedding (E,) and still spans. Its
        duplicate group is set by `set_group` before the commit."""
        start = self.append("motion", np.asarray(motion, np.float16))
        emb_row = self.append("embedding", np.asarray(embedding, np.float16)[None])
        self._spans[key] = list(spans)
        counts = {r: sum(e - s for s, e, why in spans if why == r) for r in REASONS}
        self.put({"key": key, "content_hash": content_hash, "row_start": start, "rows": len(motion),
                  "emb_row": emb_row, "seq": self.next_seq, "group": None, "similarity": None,
                  "static_frames": counts["static"], "idle_frames": counts["idle"]})
        self.next_seq += 1

    def set_group(self, key: str, group: str | None, similarity: float | None) -> None:
        """Put `key` in the duplicate group kept as `group` (None: in none); an already committed
        episode whose group changes gets its index row rewritten, its arrays untouched."""
        row = self._rows.get(key)
        if row is None:
            i = self.index["key"].index(key).as_py()
            row = self.index.slice(i, 1).to_pylist()[0]
        self._rows[key] = {**row, "group": group, "similarity": similarity}

    def tables(self, new: pa.Table) -> None:
        """The spans of this run's episodes, appended; the spans they had before superseded."""
        if not self._spans:
            return
        old = spans_table(self.group)
        live = old.live()
        redone = pc.is_in(old.take("key", live), value_set=pa.array(list(self._spans), pa.string()))
        rows = [{"key": k, "start": s, "end": e, "reason": r} for k, spans in self._spans.items() for s, e, r in spans]
        table.append(self.group.require_group(SPANS), CURATION_SPANS_SCHEMA,
                     pa.Table.from_pylist(rows, schema=CURATION_SPANS_SCHEMA),
                     live[redone.to_numpy(zero_copy_only=False)])
        self._spans.clear()
