"""Write access to a feature store: append episodes, quarantine failures, commit.

Promises (DESIGN.md, "Feature store"):
- Atomic visibility: arrays are written inside an Icechunk session; nothing is visible to
  readers until `commit()` publishes a snapshot holding both the data and the index that
  points to it. A killed run leaves chunk files no snapshot references: invisible.
- One writer per array: this process is the store's only writer (a lock for local stores,
  conditional commits on object stores), and every shard array is created and filled by
  this writer alone.
- Incremental: `plan()` (pipeline/store/plan.py) sorts episode refs into new, changed, held
  and committed by ingest hash before any decoding.
- Remembered hashes: `remember_files()` / `forget_files()` stage the source files' digests
  (pipeline/store/files.py); `commit()` writes them in the same snapshot as the index.
- O(new): a commit appends its index rows and lists the rows they replace
  (pipeline/store/index.py), writes its catalog part, and reads of the committed index only
  what it looks up — the same cost into a store of a million episodes as into an empty one.

Episodes are packed into *shards*: `/shards/<source>/<run>-<seq>/{features,timestamps,
actions,action_timestamps,state}`, one shard per source per commit, so the number of Zarr
nodes grows with commits, not with episodes. An episode's frames are buffered until it
finishes (so each episode is contiguous in its shard); an episode longer than
`spill_frames` gets a shard of its own and its blocks go straight to disk, which bounds
memory for arbitrarily long videos.

Finished episodes are written behind: a shard's episodes are held in memory and appended
in one write per array (one resize, whole chunks) when the shard holds at least a chunk of
frames and `flush_every_s` has passed since its last write, when it holds `flush_bytes`, and
always before a commit. A Zarr append costs milliseconds whatever its size, so writing each
short episode on its own was the cost of an ingest of many short clips; the offsets an episode
gets are fixed when it finishes, so its catalog row is final at once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from pipeline.store import index as episode_index
from pipeline.store.backend import WriterLock, open_repo
from pipeline.store.catalog_file import catalog_index_version, sync_catalog_file, write_catalog
from pipeline.store.files import FileMemory
from pipeline.store.format import (
    FORMAT_DOC,
    array_attributes,
    checksummed,
    dimension_names,
    library_versions,
)
from pipeline.store.index import EpisodeIndex, key_hash, key_hashes
from pipeline.store.migrate import migrate_if_needed
from pipeline.store.plan import Plan, ingest_hash
from pipeline.store.plan import plan as plan_refs
from pipeline.store.shard_buffer import PendingEpisode, ShardBuffer
from schemas import INDEX_SCHEMA, STORE_LAYOUT_VERSION, EpisodeStatus
from schemas.errors import BadInputError, StoreMismatchError
from schemas.identity import EncoderIdentity, SamplingParams
from schemas.records import ActionTrack, IndexRow

if TYPE_CHECKING:  # the store imports no source adapter: trainers never load h5py or LeRobot parsing
    from schemas.records import EpisodeRef

log = logging.getLogger(__name__)


__all__ = ["Plan", "StoreWriter", "ingest_hash"]


class StoreWriter:
    """The store's one writer. `open()` takes the writer lock; use it as a context manager
    (`with StoreWriter.open(uri, encoder=...) as w:`) or call `close()`."""

    # Remembered file hashes alone make a commit only when they spare a later refresh this much reading.
    remember_alone_bytes: int = 1 << 30

    def __init__(self, uri: str, repo, branch: str, chunk_frames: int, spill_frames: int, lock: WriterLock,
                 flush_every_s: float = 1.0, flush_bytes: int = 64 << 20):
        self.uri = uri
        self.repo = repo
        self.branch = branch
        self.token_shape: tuple[int, ...] | None = None
        self.chunk_frames = chunk_frames
        self.spill_frames = spill_frames
        self._opened_at = time.monotonic()
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self._lock = lock
        self._seq = 0
        self._pending: dict[str, PendingEpisode] = {}
        self._new_rows: dict[str, dict] = {}  # key -> index row added since the last commit
        self._replaces: dict[str, int] = {}  # key -> stored index row its new row supersedes (-1: none)
        self._noted: set[tuple] = set()  # (source, kind, sampling) recorded in the root attrs
        self._shards: dict[str, ShardBuffer] = {}
        self.flush_every_s, self.flush_bytes = flush_every_s, flush_bytes
        self.parent_version = repo.lookup_branch(branch)
        self._begin()

    @classmethod
    def open(cls, uri: str, *, encoder: EncoderIdentity, chunk_frames: int = 64, branch: str = "main",
             spill_frames: int = 4096) -> StoreWriter:
        """Open (creating if needed) the store at `uri` for appending with this encoder
        identity. The token shape is taken from the store, or from the first features."""
        # Locked before anything is read, so the session starts from the newest commit.
        lock = WriterLock(uri, create=True).__enter__()
        try:
            repo = open_repo(uri, create=True)
            migrate_if_needed(uri, repo, branch)  # a layout-1 store: one commit of its own, first
            self = cls(uri, repo, branch, chunk_frames, spill_frames, lock)
            self._check_identity(encoder)
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        return self

    def _check_identity(self, encoder: EncoderIdentity) -> None:
        uri = self.uri
        attrs = dict(self.root.attrs)
        if "encoder" not in attrs:
            self.root.attrs.update({"lawam_layout": STORE_LAYOUT_VERSION, "encoder": encoder.to_dict()})
            attrs = dict(self.root.attrs)
        else:
            stored = EncoderIdentity.from_dict(attrs["encoder"], where=f"store {uri!r}")
            stored.require_same(encoder, ours=f"store {uri!r}", theirs="this run", fix="choose another --store")
        if attrs.get("lawam_layout") != STORE_LAYOUT_VERSION:
            raise StoreMismatchError(f"store {uri!r} has layout {attrs.get('lawam_layout')}; this lawam reads and "
                                     f"writes layout {STORE_LAYOUT_VERSION}: upgrade lawam to write to it")
        if attrs.get("token_shape"):
            self.token_shape = tuple(attrs["token_shape"])
        # What a plain zarr reader needs to make sense of the store (docs/store-format.md);
        # written only when it changes, and published with the run's first commit.
        about = {"format": FORMAT_DOC, "written_with": library_versions()}
        if any(attrs.get(k) != v for k, v in about.items()):
            self.root.attrs.update(about)

    def _note_sampling(self, ref: EpisodeRef, params: SamplingParams) -> None:
        """Record in the root attrs `sources` how `ref`'s source is sampled (fps, resize mode,
        image size, ...): the newest run's settings per source."""
        noted = (ref.source, ref.kind, params)
        if noted in self._noted:  # checked once per source and sampling, not per episode
            return
        self._noted.add(noted)
        sources = dict(self.root.attrs.get("sources", {}))
        entry = {**sources.get(ref.source, {}), "kind": ref.kind, "sampling": params.to_dict()}
        if sources.get(ref.source) != entry:
            sources[ref.source] = entry
            self.root.attrs["sources"] = sources

    def _note_names(self, ref: EpisodeRef, actions: ActionTrack) -> None:
        """Record in the root attrs `sources` the names of the source's action and state columns
        (LeRobot's `info.json` names), so shard arrays made from now on carry them too."""
        sources = dict(self.root.attrs.get("sources", {}))
        entry = dict(sources.get(ref.source, {}))
        named = {"action_names": list(actions.names) if actions.names else None,
                 "state_names": list(actions.state_names) if actions.state_names else None}
        named = {k: v for k, v in named.items() if v and entry.get(k) != v}
        if named:
            sources[ref.source] = {**entry, **named}
            self.root.attrs["sources"] = sources

    def _begin(self) -> None:
        """A session on the branch tip. The committed index is read lazily, only what is looked up."""
        self.session = self.repo.writable_session(self.branch)
        self.root = zarr.open_group(self.session.store, mode="a")
        self.index = EpisodeIndex(self.root, self.repo, self.session.snapshot_id)
        self._files = FileMemory(self.root)
        self._columns: dict[str, pa.Array] = {}  # whole committed columns read for lookups
        self._shards.clear()
        self._seq += 1

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the writer lock; anything not committed is dropped (and stays invisible)."""
        self._lock.__exit__(None, None, None)

    # -- planning ----------------------------------------------------------------------
    def plan(self, refs: list[EpisodeRef], params_for: Callable[[EpisodeRef], SamplingParams], *,
             retry_quarantined: bool = False) -> Plan:
        """Sort refs into work to do and work already committed (pipeline/store/plan.py). An
        unchanged episode whose instruction text changed (an edited manifest) is not
        re-encoded: its catalog row is updated in the next commit. A quarantined episode is
        retried only when its input changed (its ingest hash differs) or with
        `retry_quarantined`; otherwise it is held."""
        plan = plan_refs(self.index, refs, params_for, retry_quarantined=retry_quarantined)
        self._replaces.update(plan.rows)
        if plan.retitled:
            rows = np.array([plan.rows[ref.key] for ref in plan.retitled], np.int64)
            committed = self.index.read(rows=rows).to_pylist()
            for ref, row in zip(plan.retitled, committed, strict=True):
                self._new_rows[ref.key] = {**row, "instruction": ref.instruction}
        return plan

    def _committed_row(self, key: str) -> int:
        """The stored index row of `key`'s live version; -1 when none."""
        if key in self._replaces:
            return self._replaces[key]
        row = int(self._find(np.array([key_hash(key)], np.uint64), [key])[0])
        self._replaces[key] = row
        return row

    def _find(self, hashes: np.ndarray, keys: list[str]) -> np.ndarray:
        """Stored rows of the live versions of `keys` (-1: none), by key hash: one pass of the
        committed hashes against a set of these few (O(index) in Arrow, milliseconds at a million;
        no sort). A hash that names another episode (a 64-bit collision, about 1 in 10^7 at a
        million episodes) is refused: lookups by hash must name one episode."""
        if not self.index.rows:
            return np.full(len(hashes), -1, np.int64)
        stored = self._column("key_hash")
        hit = pc.is_in(stored, value_set=pa.array(hashes, pa.uint64())).to_numpy(zero_copy_only=False)
        hit[self.index.superseded] = False
        found = np.flatnonzero(hit)
        row_of = dict(zip(stored.take(pa.array(found)).to_pylist(), found.tolist(), strict=True))
        rows = np.array([row_of.get(h, -1) for h in hashes.tolist()], np.int64)
        hits = np.flatnonzero(rows >= 0).tolist()
        for i in hits:
            have = self._key_at(int(rows[i]), whole=len(hits) > 16)
            if have != keys[i]:
                raise BadInputError(f"episode key {keys[i]!r} has the same 64-bit key hash as {have!r} in "
                                    f"{self.uri!r}: rename one of them (episode id) to store both")
        return rows

    def _key_at(self, row: int, whole: bool) -> str:
        """The key of stored index row `row` (from the whole key columns when many are asked)."""
        if whole:
            return f"{self._column('source')[row]}/{self._column('episode_id')[row]}"
        return f"{self.index.column('source', row, row + 1)[0]}/{self.index.column('episode_id', row, row + 1)[0]}"

    # -- writing -----------------------------------------------------------------------
    def start_episode(self, ref: EpisodeRef, params: SamplingParams) -> None:
        self._pending[ref.key] = PendingEpisode(ref, ingest_hash(ref, params))
        self._note_sampling(ref, params)

    def append_frames(self, ref: EpisodeRef, features: np.ndarray, timestamps: np.ndarray) -> None:
        p = self._pending[ref.key]
        if self.token_shape is None:
            self.token_shape = tuple(features.shape[1:])
            self.root.attrs["token_shape"] = list(self.token_shape)
        if features.shape[1:] != self.token_shape:
            raise ValueError(f"features {features.shape[1:]} do not match the store's {self.token_shape}")
        if p.spilled is None and p.n + len(features) > self.spill_frames:
            p.spilled_name = f"{ref.source}/{self.run_id}-{self._seq:03d}-{uuid.uuid4().hex[:6]}"
            p.spilled = self._create_shard(p.spilled_name)
            self._append(p.spilled, "features", np.concatenate(p.blocks + [features]))
            self._append(p.spilled, "timestamps", np.concatenate(p.stamps + [timestamps]))
            p.blocks, p.stamps = [], []
        elif p.spilled is not None:
            self._append(p.spilled, "features", features)
            self._append(p.spilled, "timestamps", timestamps)
        else:
            p.blocks.append(features)
            p.stamps.append(timestamps)
        p.n += len(features)

    def finish_episode(self, ref: EpisodeRef, actions: ActionTrack | None, fps: float) -> None:
        """The episode is complete: give it its rows in its shard and its catalog row (both
        published by the next commit). Its data may stay buffered until then."""
        p = self._pending.pop(ref.key)
        if p.n == 0:
            raise BadInputError(f"{ref.key}: no frames decoded")
        has_actions = actions is not None and len(actions.actions) > 0
        if has_actions:
            self._note_names(ref, actions)
        if p.spilled is not None:
            shard, group, start, action_start = p.spilled_name, p.spilled, 0, 0
            if has_actions:
                action_start = self._append(group, "actions", np.asarray(actions.actions, np.float32))
                self._append(group, "action_timestamps", np.asarray(actions.timestamps, np.float64))
                if actions.state is not None:
                    self._append(group, "state", np.asarray(actions.state, np.float32))
        else:
            shard = f"{ref.source}/{self.run_id}-{self._seq:03d}"
            buf = self._shards.get(shard)
            if buf is None:
                buf = self._shards[shard] = ShardBuffer(shard, flushed_at=self._opened_at)
            rows = {"features": p.blocks[0] if len(p.blocks) == 1 else np.concatenate(p.blocks),
                    "timestamps": p.stamps[0] if len(p.stamps) == 1 else np.concatenate(p.stamps)}
            if has_actions:
                rows["actions"] = np.asarray(actions.actions, np.float32)
                rows["action_timestamps"] = np.asarray(actions.timestamps, np.float64)
                if actions.state is not None:
                    rows["state"] = np.asarray(actions.state, np.float32)
            buf.check(rows)  # a misfit (actions of another width) fails this episode, not the whole shard
            if has_actions:
                buf.align_state(rows)
            start = buf.add("features", rows["features"])
            action_start = buf.rows.get("actions", 0) if has_actions else 0
            for name, data in rows.items():
                if name != "features":
                    buf.add(name, data)
        self._put_row(ref, p.ingest_hash, EpisodeStatus.OK, None, p.n, p.n / fps,
                      len(actions.actions) if has_actions else 0, shard, start, action_start)

    def flush(self, force: bool = False) -> None:
        """Write buffered episodes behind (they stay invisible until `commit`): a shard once it
        holds `flush_bytes`, or a chunk of frames and `flush_every_s` passed since its last
        write; every shard when `force`. A driver calls this between episodes; `commit` always
        flushes. A failure here is the store's (a disk, a bucket), never an episode's."""
        now = time.monotonic()
        for buf in self._shards.values():
            if force or buf.nbytes >= self.flush_bytes or (
                    buf.frames >= self.chunk_frames and now - buf.flushed_at >= self.flush_every_s):
                self._flush(buf)

    def _flush(self, buf: ShardBuffer) -> None:
        """Write a shard's buffered episodes: one append per array."""
        if buf.group is None:
            buf.group = self._create_shard(buf.name)
        for name, parts in buf.parts.items():
            if not parts:
                continue
            data = parts[0] if len(parts) == 1 else np.concatenate(parts)
            arr = buf.arrays.get(name)
            if arr is None:
                arr = buf.arrays[name] = self._array(buf.group, name, data)
            start = arr.shape[0]
            if start + len(data) != buf.rows[name]:
                raise RuntimeError(f"shard {buf.name}/{name}: {start} rows on disk + {len(data)} buffered "
                                   f"!= {buf.rows[name]} promised")  # a bug: offsets in rows already given out
            arr.resize((start + len(data),) + arr.shape[1:])
            arr[start:] = data
            parts.clear()
        buf.frames, buf.nbytes, buf.flushed_at = 0, 0, time.monotonic()

    def quarantine(self, ref: EpisodeRef, reason: str, params: SamplingParams) -> None:
        """Record a failed episode. A previously committed good version of it stays. The row
        counts the failed attempts (`failures`) since it was first quarantined (`failed_since`)."""
        self._pending.pop(ref.key, None)
        reason = reason.splitlines()[0][:500] if reason else "unknown error"
        ihash = ingest_hash(ref, params)
        failures, since = 1, None
        i = self._committed_row(ref.key)
        if i >= 0:
            row = {c: self._column(c)[i].as_py() for c in ("status", "failures", "failed_since", "ingested_at")}
            if row["status"] == EpisodeStatus.OK:
                log.warning("%s: %s (keeping the committed version)", ref.key, reason)
                return
            # A store written before these columns existed: it failed at least once, when ingested.
            failures = (row["failures"] or 1) + 1
            since = row["failed_since"] or row["ingested_at"]
        self._put_row(ref, ihash, EpisodeStatus.QUARANTINED, reason, 0, 0.0, 0, None, 0, 0,
                      failures=failures, failed_since=since)

    def _put_row(self, ref: EpisodeRef, ihash: str, status: str, reason: str | None, frames: int,
                 duration: float, n_actions: int, shard: str | None, frame_start: int, action_start: int, *,
                 failures: int = 0, failed_since: datetime | None = None) -> None:
        now = datetime.now(UTC).replace(microsecond=0)
        if status == EpisodeStatus.QUARANTINED and failed_since is None:
            failed_since = now
        self._new_rows[ref.key] = IndexRow(
            source=ref.source, episode_id=ref.episode_id, kind=ref.kind, uri=ref.uri, content_hash=ihash,
            status=str(status), reason=reason, failed_since=failed_since, failures=failures,
            instruction=ref.instruction, frames=frames, duration_s=duration, actions=n_actions, shard=shard,
            frame_start=frame_start, action_start=action_start, ingested_at=now, split=ref.split,
        ).as_dict()  # key_hash: computed for the whole batch at commit

    def _column(self, name: str) -> pa.Array:
        """A whole committed index column, read once (lookups and quarantines use a few rows of it)."""
        if name not in self._columns:
            self._columns[name] = self.index.column(name)
        return self._columns[name]

    # -- remembered file hashes ------------------------------------------------------------
    def remember_files(self, records: Iterable) -> int:
        """Stage source files' identity -> digest records (`pipeline.sources.hashing.FileRecord`s,
        or mappings with the FILES_SCHEMA fields) to be written with the next commit; returns
        how many differ from the committed ones. They ride along with the next commit of
        episodes; alone they make a commit only when their trusted records cover at least
        `remember_alone_bytes` of files (a later refresh is then spared reading them: e.g. after
        a restore touched every file), so a refresh that changed no episode keeps the store
        version unchanged. Records whose `trusted()` is False (racy: hashed right after a
        write) never count."""
        return self._files.remember(records)

    def forget_files(self, under: Iterable[str], seen: Iterable[str]) -> int:
        """Stage dropping the `files` rows of files under the source roots `under` (each
        enumerated whole by this run) that are not in `seen`: deleted, or no longer part of
        their source. Returns how many. Like remembered hashes, this rides along with the next
        commit of episodes and never makes one alone; episodes of those files stay."""
        return self._files.forget(under, seen)

    def _create_shard(self, name: str) -> zarr.Group:
        return self.root.require_group(f"shards/{name}")

    def _described(self, group: zarr.Group, name: str, data: np.ndarray) -> dict:
        """`create_array` arguments that make shard array group[name] (first rows: `data`)
        checksummed and self-describing (docs/store-format.md)."""
        source = group.path.split("/")[1]
        sampling = dict(self.root.attrs.get("sources", {})).get(source, {}).get("sampling")
        extra = {"sampling": sampling, "written_with": library_versions()} if name == "features" else {}
        if name in ("actions", "state"):  # column names, when the source gives them (`_note_names`)
            extra["names"] = dict(self.root.attrs.get("sources", {})).get(source, {}).get(f"{name.rstrip('s')}_names")
        if name == "action_timestamps" and len(data) > 1:  # of the first episode(s) written
            steps = np.diff(data)
            extra["control_rate_hz"] = round(float(1.0 / np.median(steps[steps > 0])), 6)
        return {"compressors": checksummed(), "dimension_names": dimension_names(name, data.ndim),
                "attributes": array_attributes(name, **extra)}

    def _array(self, group: zarr.Group, name: str, data: np.ndarray) -> zarr.Array:
        """group[name], created empty with rows shaped like `data`'s on first use: checksummed
        and self-describing."""
        if name not in group:
            chunk = (self.chunk_frames if name == "features" else 4096,) + data.shape[1:]
            group.create_array(name, shape=(0,) + data.shape[1:], chunks=chunk, dtype=data.dtype,
                               **self._described(group, name, data))
        return group[name]

    def _append(self, group: zarr.Group, name: str, data: np.ndarray) -> int:
        """Append rows to group[name] (created on first use); returns the first new row."""
        arr = self._array(group, name, data)
        start = arr.shape[0]
        arr.resize((start + len(data),) + arr.shape[1:])
        arr[start:] = data
        return start

    # -- publishing --------------------------------------------------------------------
    def commit(self, message: str, metadata: dict | None = None) -> str | None:
        """Publish everything finished so far as one new version; None if nothing changed.
        Episodes still in flight stay buffered and land in a later commit."""
        files = self._files
        if not self._new_rows and (not files.trusted_changes or files.trusted_bytes < self.remember_alone_bytes):
            self._sync_catalog_file()  # a run killed between its commit and the Parquet copy
            return None
        self.flush(force=True)
        files.write(self.root)
        meta = {"lawam_run": self.run_id, **(metadata or {})}
        replaced = np.zeros(0, np.int64)
        if self._new_rows:
            rows = pa.Table.from_pylist(list(self._new_rows.values()), schema=INDEX_SCHEMA)
            keys = list(self._new_rows)
            hashes = key_hashes(keys)
            rows = rows.set_column(rows.schema.get_field_index("key_hash"), "key_hash", pa.array(hashes, pa.uint64()))
            known = np.array([self._replaces.get(k, -1) for k in keys], np.int64)
            new = np.flatnonzero(known < 0)  # new keys, or written without a plan that looked them up:
            if len(new):  # their hash must name no other live episode (lookups trust it)
                known[new] = self._find(hashes[new], [keys[i] for i in new.tolist()])
            replaced = known[known >= 0]
            ends, ids = self.index.batches()
            catalog_current = catalog_index_version(self.uri) == (ids[-1] if ids else None)
            first = episode_index.append(self.root, rows, replaced, ids[-1] if ids else "")
            self._drop_dead_shards(replaced)
            meta[episode_index.ROWS_KEY] = first + rows.num_rows
        version = self.session.commit(message, metadata=meta)
        log.info("committed %s: +%d index rows, %d replaced", version, len(self._new_rows), len(replaced))
        self.parent_version = version
        for key in self._new_rows:  # their live row is the new one now; other planned keys keep theirs
            self._replaces.pop(key, None)
        self._new_rows.clear()
        pending_spills = {k: p for k, p in self._pending.items() if p.spilled is not None}
        replaced_batches = self._batches_of(replaced)
        self._begin()
        for p in pending_spills.values():  # re-open their shards in the new session
            p.spilled = self.root[f"shards/{p.spilled_name}"]
        try:
            if meta.get(episode_index.ROWS_KEY) and catalog_current:  # only the parts this commit changed
                ends, _ = self.index.batches()
                write_catalog(self.uri, self.index, sorted(replaced_batches | {len(ends) - 1}))
            else:
                self._sync_catalog_file()
        except OSError as e:  # the commit is what counts; the Parquet copy is a convenience
            log.warning("could not write catalog.parquet: %s (the next run rewrites it)", e)
        return version

    def _batches_of(self, rows: np.ndarray) -> set[int]:
        """Index batches (catalog parts) holding stored rows `rows`."""
        if not len(rows):
            return set()
        ends, _ = self.index.batches()
        return set(np.searchsorted(ends, rows, side="right").tolist())

    def _drop_dead_shards(self, replaced: np.ndarray) -> None:
        """Remove from the tree the shards whose every episode was redone: older versions keep
        them (and `lawam gc` reclaims their chunks once those versions expire); the new one no
        longer points at them, so their bytes are not kept alive by every later version."""
        if not len(replaced):
            return
        shard = self.index.column("shard")
        candidates = set(shard.take(pa.array(replaced)).drop_null().to_pylist())
        if not candidates:
            return
        live = self.index.live_mask()
        live[replaced] = False
        still = shard.filter(pa.array(live)).unique()
        dead = candidates - set(still.drop_null().to_pylist())
        dead -= {r["shard"] for r in self._new_rows.values()}
        dead -= {p.spilled_name for p in self._pending.values()}
        for name in sorted(dead):
            del self.root[f"shards/{name}"]
            log.info("shard %s: every episode redone, dropped from the new version", name)

    def _sync_catalog_file(self) -> None:
        """Rewrite catalog.parquet if it does not describe the index of the branch tip this writer holds."""
        try:
            if sync_catalog_file(self.uri, self.index, self.parent_version):
                log.info("catalog.parquet rewritten for %s", self.parent_version)
        except OSError as e:
            log.warning("could not write catalog.parquet: %s (the next run rewrites it)", e)
