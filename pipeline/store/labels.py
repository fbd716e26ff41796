"""Label sets: latent-action labels stored next to the features they were computed from.

Promise (DESIGN.md, "Label sets"): one label set per LaWM checkpoint, keyed by the hash of
its weights; labels of two checkpoints never mix, several sets coexist, and each is added
in a commit, incrementally — only episodes without labels of that set, or redone since.

Layout, inside the same Icechunk repository (so a store version pins features *and* labels):

    /labels/<set>/                    attrs: the LaWM it came from (card summary), k_seconds, dim
    /labels/<set>/shards/<run>/z      (rows, Z) float32, z[t] = IDM(f_t, f_{t+k}) of one episode
    /labels/<set>/shards/<run>/codes  (rows, Q) int32, vector-quantised sets only
    /labels/<set>/index/...           LABEL_INDEX_SCHEMA: key, content_hash, shard, row_start, rows, k_frames

An episode's labels are *current* while the content hash they were computed from equals the
episode's hash in the store index. A redone episode (its video changed) keeps its key and
gets a new hash, so its old labels stop being served at once, and the next labelling run
redoes it — nothing derived from old features is ever handed out as if it were new.

Like the ingest, the writer holds the store's writer lock for the whole run and publishes
in one commit: a run killed mid-way leaves no label of that run visible.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from pipeline.store import table
from pipeline.store.backend import StoreError, WriterLock, open_repo
from pipeline.store.format import checksummed
from pipeline.store.reader import CHUNK_ERRORS, EpisodeKeys, FeatureStore, StoreCorruptError
from pipeline.store.table import key_hash
from schemas import LABEL_INDEX_SCHEMA

log = logging.getLogger(__name__)

LABELS_GROUP = "labels"
LEGACY_LABEL_SCHEMA = pa.schema([f for f in LABEL_INDEX_SCHEMA if f.name not in ("key_hash", "index_row")])
_SET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FLUSH_BYTES = 64 << 20  # buffered label rows are written in blocks of about this size
_CACHE_BYTES = 128 << 20  # labels a reader keeps in memory (a trainer reads each episode many times)


def label_index(group: zarr.Group) -> table.Table:
    """The index table of a label set's group (either layout; layout 1 did not record index rows)."""
    labels = table.Table(group.get("index"), LABEL_INDEX_SCHEMA, LEGACY_LABEL_SCHEMA, legacy_keys=lambda t: t["key"])
    if labels.legacy is not None and "index_row" not in labels.legacy.column_names:
        labels.legacy = labels.legacy.append_column("index_row", pa.array(np.full(labels.rows, -1, np.int64)))
    return labels


def match(store: FeatureStore, labels: table.Table) -> tuple[np.ndarray, np.ndarray, int]:
    """Which live label rows are current for `store`'s episodes: (label row of each episode row,
    -1 where none is current; the stored label rows of the live ones; how many are stale). A
    label row is current while the episode's features are those it was computed from: its
    `index_row` is the episode's live index row, or (a retitled or re-indexed episode) its content
    hash is the episode's. A redone episode's labels stop being served at once. In numpy, on
    numbers: a string is compared only for label rows whose index row was superseded."""
    rows = labels.live()
    index_row = labels.take("index_row", rows).to_numpy()
    episodes = store.index_rows  # ascending
    i = np.minimum(np.searchsorted(episodes, index_row), max(len(episodes) - 1, 0))
    direct = (index_row >= 0) & (episodes[i] == index_row) if len(episodes) else np.zeros(len(rows), bool)
    at = np.where(direct, i, -1)
    stale = 0
    rest = np.flatnonzero(~direct)
    if len(rest) and len(store):  # compare content hashes of the episodes with those keys now
        found = store.rows_by_hash(labels.take("key_hash", rows[rest]).to_numpy())
        hit = found >= 0
        if hit.any():
            now = store.episodes(["content_hash"])["content_hash"].take(pa.array(np.where(hit, found, 0)))
            same = hit & pc.equal(now, labels.take("content_hash", rows[rest])).to_numpy(zero_copy_only=False)
            at[rest[same]] = found[same]
            stale = int((hit & ~same).sum())
    of_row = np.full(len(store), -1, np.int64)
    current = np.flatnonzero(at >= 0)
    of_row[at[current]] = current
    return of_row, rows, stale


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


class LabelSet:
    """One label set, read-only, at the store version it was opened with."""

    def __init__(self, store: FeatureStore, set_id: str, group: zarr.Group):
        self.store = store
        self.id = set_id
        self.group = group
        self.attrs = dict(group.attrs)
        self.dim = int(self.attrs.get("dim", 0))
        labels = label_index(group)
        self._of_row, rows, self.stale = match(store, labels)
        shards = pc.dictionary_encode(labels.take("shard", rows))
        self._shard_names = shards.dictionary.to_pylist()
        self._shard_code = shards.indices.to_numpy(zero_copy_only=False)
        self._start = labels.take("row_start", rows).to_numpy()
        self._rows = labels.take("rows", rows).to_numpy()
        self._k = labels.take("k_frames", rows).to_numpy()
        self._arrays: dict[str, zarr.Array] = {}
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()  # label row -> z, LRU
        self._cached = 0

    @classmethod
    def open(cls, store: FeatureStore, set_id: str) -> LabelSet:
        path = f"{LABELS_GROUP}/{set_id}"
        if path not in store.root:
            have = [s.id for s in list_label_sets(store)]
            raise StoreError(f"store {store.uri!r} has no label set {set_id!r} at version {store.version}"
                             f" (it has {have or 'none'}; run `lawam label` first)")
        return cls(store, set_id, store.root[path])

    def _label_row(self, key: str) -> int:
        rows = self.store.rows([key])
        return int(self._of_row[rows[0]]) if rows[0] >= 0 else -1

    def __contains__(self, key: str) -> bool:
        return self._label_row(key) >= 0

    @property
    def labelled(self) -> int:
        """Episodes with current labels."""
        return int((self._of_row >= 0).sum())

    @property
    def keys(self) -> EpisodeKeys:
        """Episodes with current labels."""
        return EpisodeKeys(self.store.keys.arrow.filter(pa.array(self._of_row >= 0)))

    def k_frames(self, key: str) -> int:
        return int(self._k[self._label_row(key)])

    def _shard(self, i: int) -> str:
        return self._shard_names[self._shard_code[i]]

    def _array(self, shard: str, name: str) -> zarr.Array:
        path = f"{shard}/{name}"
        if path not in self._arrays:
            self._arrays[path] = self.group[f"shards/{path}"]
        return self._arrays[path]

    def episode(self, key: str) -> np.ndarray | None:
        """(N - k, Z) float32: z[t] for the pair (t, t + k_frames); None when the episode has no
        current labels of this set (never labelled, or redone since)."""
        rows = self.store.rows([key])
        return self.at(int(rows[0])) if rows[0] >= 0 else None

    def at(self, row: int) -> np.ndarray | None:
        """`episode` of the store's episode row `row`."""
        i = int(self._of_row[row])
        if i < 0:
            return None
        z = self._cache.get(i)
        if z is None:
            s, n = int(self._start[i]), int(self._rows[i])
            try:
                z = self._cache[i] = self._array(self._shard(i), "z")[s : s + n]
            except CHUNK_ERRORS as e:
                cause = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
                raise StoreCorruptError(
                    f"store {self.store.uri!r} version {self.store.version}: labels of episode "
                    f"{self.store.keys[row]} (label set {self.id}, shard {self._shard(i)}) cannot be read: "
                    f"{cause[:200]}") from e
            self._cached += z.nbytes
            while self._cached > _CACHE_BYTES and len(self._cache) > 1:
                self._cached -= self._cache.popitem(last=False)[1].nbytes
        else:
            self._cache.move_to_end(i)
        return z

    def codes(self, key: str) -> np.ndarray | None:
        """(N - k, Q) int32 code indices of a vector-quantised set; None otherwise."""
        i = self._label_row(key)
        if i < 0 or "codes" not in self.group[f"shards/{self._shard(i)}"]:
            return None
        s, n = int(self._start[i]), int(self._rows[i])
        return self._array(self._shard(i), "codes")[s : s + n]

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
    if LABELS_GROUP not in store.root:
        return []
    out = []
    for name in sorted(store.root[LABELS_GROUP].group_keys()):
        ls = LabelSet(store, name, store.root[f"{LABELS_GROUP}/{name}"])
        out.append(LabelSetInfo(name, ls.attrs, ls.labelled, ls.stale, len(store)))
    return out


class LabelWriter:
    """The one writer of a label set. Holds the store's writer lock from `open()` to
    `close()`; `put()` buffers, `commit()` publishes everything in one new version."""

    def __init__(self, uri: str, set_id: str, attrs: dict, branch: str, lock: WriterLock):
        if not _SET_ID.match(set_id):
            raise ValueError(f"label set id {set_id!r}: letters, digits, '.', '_' or '-' only")
        self.uri, self.set_id, self.branch, self._lock = uri, set_id, branch, lock
        self.repo = open_repo(uri, create=False)
        self.session = self.repo.writable_session(branch)
        self.parent_version: str = self.session.snapshot_id
        self.root = zarr.open_group(self.session.store, mode="a")
        path = f"{LABELS_GROUP}/{set_id}"
        if path in self.root:
            self.group = self.root[path]
            if dict(self.group.attrs).get("dim") not in (None, attrs.get("dim")):
                raise StoreError(f"label set {set_id!r} in {uri!r} holds z of dim {self.group.attrs['dim']}, "
                                 f"this LaWM gives {attrs.get('dim')}")
        else:
            self.group = self.root.require_group(path)
            self.group.attrs.update({**attrs, "created_at": datetime.now(UTC).isoformat(timespec="seconds")})
        self.index = label_index(self.group)
        self.shard = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self._rows: dict[str, dict] = {}
        self._buf_z: list[np.ndarray] = []
        self._buf_codes: list[np.ndarray] = []
        self._buffered = 0  # rows ...
        self._buffered_bytes = 0  # ... and bytes of z buffered
        self._written = 0  # rows already in the shard arrays
        self._store: FeatureStore | None = None  # the version labelled (`todo`), for `index_row`

    @classmethod
    def open(cls, uri: str, set_id: str, attrs: dict, *, branch: str = "main") -> LabelWriter:
        from pipeline.store.migrate import migrate_if_needed  # it imports this module's label layout

        lock = WriterLock(uri).__enter__()
        try:
            migrate_if_needed(uri, open_repo(uri, create=False), branch)  # a layout-1 store: its own commit, first
            return cls(uri, set_id, attrs, branch, lock)
        except BaseException:
            lock.__exit__(None, None, None)
            raise

    def __enter__(self) -> LabelWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock; labels not committed are dropped (and stay invisible)."""
        self._lock.__exit__(None, None, None)

    def todo(self, store: FeatureStore) -> list[str]:
        """Keys of `store`'s episodes that lack current labels of this set. `store` should be
        the version this writer starts from (`parent_version`); `put` labels episodes of it."""
        self._store = store
        of_row, _, _ = match(store, self.index)
        return store.keys[of_row < 0].tolist()

    def _index_row(self, key: str) -> int:
        """The stored index row of `key`'s version in the store the labels are computed from."""
        if self._store is None:
            self._store = FeatureStore.open(self.uri, self.parent_version)
        row = int(self._store.rows([key])[0])
        return int(self._store.index_rows[row]) if row >= 0 else -1

    def put(self, key: str, content_hash: str, z: np.ndarray, k_frames: int, codes: np.ndarray | None = None) -> None:
        """Buffer one episode's labels: z (N - k, Z), from the features with `content_hash`."""
        z = np.asarray(z, np.float32)
        if z.ndim != 2:
            raise ValueError(f"{key}: labels must be (pairs, dim), got {z.shape}")
        start = self._written + self._buffered
        self._buf_z.append(z)
        if codes is not None:
            self._buf_codes.append(np.asarray(codes, np.int32))
        self._buffered += len(z)
        self._buffered_bytes += z.nbytes
        self._rows[key] = {"key": key, "content_hash": content_hash, "shard": self.shard, "row_start": start,
                           "rows": len(z), "k_frames": int(k_frames), "key_hash": key_hash(key),
                           "index_row": self._index_row(key)}
        if self._buffered_bytes > _FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._buf_z:
            return
        shard = self.group.require_group(f"shards/{self.shard}")
        for name, bufs in (("z", self._buf_z), ("codes", self._buf_codes)):
            if not bufs:
                continue
            data = np.concatenate(bufs)
            if name not in shard:
                shard.create_array(name, shape=(0, data.shape[1]), chunks=(8192, data.shape[1]), dtype=data.dtype,
                                   dimension_names=("pair", "dim" if name == "z" else "query"),
                                   compressors=checksummed(),
                                   attributes={"description": "latent action z of pair (t, t + k_frames)" if name == "z"
                                               else "quantizer code per query of pair (t, t + k_frames)"})
            arr = shard[name]
            start = arr.shape[0]
            arr.resize((start + len(data), data.shape[1]))
            arr[start:] = data
        self._written += self._buffered
        self._buf_z, self._buf_codes, self._buffered, self._buffered_bytes = [], [], 0, 0

    @property
    def pending(self) -> int:
        return len(self._rows)

    def commit(self, message: str, metadata: dict | None = None) -> str | None:
        """Publish the buffered labels (and the updated label index) as one new version."""
        if not self._rows:
            return None
        self._flush()
        new = pa.Table.from_pylist(list(self._rows.values()), schema=LABEL_INDEX_SCHEMA)
        live = self.index.live()
        hashes = self.index.column("key_hash").take(pa.array(live))
        replaced = live[pc.is_in(hashes, value_set=new["key_hash"]).to_numpy(zero_copy_only=False)]
        table.append(self.group.require_group("index"), LABEL_INDEX_SCHEMA, new, replaced)
        version = self.session.commit(message, metadata={"lawam_label_set": self.set_id, **(metadata or {})})
        log.info("committed %s: label set %s, +%d episodes", version, self.set_id, len(self._rows))
        self._rows.clear()
        return version
