"""Write access to a feature store: append episodes, quarantine failures, commit.

Promises (DESIGN.md, "Feature store"):
- Atomic visibility: arrays are written inside an Icechunk session; nothing is visible to
  readers until `commit()` publishes a snapshot holding both the data and the index that
  points to it. A killed run leaves chunk files no snapshot references: invisible.
- One writer per array: this process is the store's only writer (a lock for local stores,
  conditional commits on object stores), and every shard array is created and filled by
  this writer alone.
- Incremental: `plan()` diffs episode refs against the committed index by ingest hash
  (content hash + sampling); unchanged episodes are skipped before any decoding, and so
  are quarantined ones whose input did not change (unless asked to retry them).
- Remembered hashes: `remember_files()` stages the source files' stat identities and
  digests, `forget_files()` drops those of files gone from a source; `commit()` writes
  them as `/files` in the same snapshot as the index.

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from pipeline.store.backend import WriterLock, open_repo
from pipeline.store.catalog_file import fill_store_version, sync_catalog_file, write_catalog_file
from pipeline.store.format import (
    FORMAT_DOC,
    array_attributes,
    checksummed,
    dimension_names,
    library_versions,
    no_state,
)
from pipeline.store.index import FILES_GROUP, read_files, read_index, write_index
from pipeline.store.reader import store_commit_at
from schemas import INDEX_SCHEMA, STORE_LAYOUT_VERSION, EpisodeStatus
from schemas.errors import BadInputError, StoreMismatchError
from schemas.identity import EncoderIdentity, SamplingParams
from schemas.records import ActionTrack, IndexRow
from schemas.tables import FILES_SCHEMA

if TYPE_CHECKING:  # the store imports no source adapter: trainers never load h5py or LeRobot parsing
    from schemas.records import EpisodeRef

log = logging.getLogger(__name__)


def ingest_hash(ref: EpisodeRef, params: SamplingParams) -> str:
    """What decides whether an episode must be (re)done: its bytes and how it is sampled."""
    return params.ingest_hash(ref.content_hash)


@dataclass
class Plan:
    todo: list[EpisodeRef]  # new, changed, or quarantined and retried
    skipped: list[EpisodeRef]  # already committed with the same ingest hash
    retitled: list[EpisodeRef] = field(default_factory=list)  # skipped, but their instruction changed
    held: list[EpisodeRef] = field(default_factory=list)  # quarantined with this same input: not retried


@dataclass
class _Pending:
    ref: EpisodeRef
    ingest_hash: str
    blocks: list[np.ndarray] = field(default_factory=list)
    stamps: list[np.ndarray] = field(default_factory=list)
    n: int = 0
    spilled: zarr.Group | None = None  # own shard once longer than spill_frames
    spilled_name: str | None = None


@dataclass
class _ShardBuffer:
    """Finished episodes of one shard not written yet: rows to append, per array."""

    name: str
    group: zarr.Group | None = None
    arrays: dict[str, zarr.Array] = field(default_factory=dict)  # handles, looked up once per session
    rows: dict[str, int] = field(default_factory=dict)  # rows each array holds once flushed
    parts: dict[str, list[np.ndarray]] = field(default_factory=dict)
    frames: int = 0  # feature rows buffered
    nbytes: int = 0
    flushed_at: float = 0.0

    def check(self, rows: dict[str, np.ndarray]) -> None:
        """Raise BadInputError unless each array's rows fit (trailing shape, dtype) those already there."""
        for name, data in rows.items():
            have = self._rows_like(name)
            if have is not None and (have.shape[1:], have.dtype) != (data.shape[1:], data.dtype):
                raise BadInputError(f"{name} rows {data.dtype}{list(data.shape[1:])} do not fit the shard's "
                                 f"{have.dtype}{list(have.shape[1:])}")

    def _rows_like(self, name: str) -> np.ndarray | zarr.Array | None:
        """Rows of `name` already in the shard (buffered or written), for their shape and dtype."""
        parts = self.parts.get(name)
        return parts[0] if parts else self.arrays.get(name)

    def align_state(self, rows: dict[str, np.ndarray]) -> None:
        """Keep `state` row for row beside `actions` (episodes index both by `action_start`)
        when only some of a shard's episodes have state: the others' state rows are NaN,
        which readers take for "no state". Call before adding `rows`."""
        behind = self.rows.get("actions", 0) - self.rows.get("state", 0)
        if "state" in rows:
            if behind > 0:  # earlier episodes of this shard had none
                self.add("state", no_state(behind, rows["state"].shape[1:]))
        elif "state" in self.rows:
            rows["state"] = no_state(len(rows["actions"]), self._rows_like("state").shape[1:])

    def add(self, name: str, data: np.ndarray) -> int:
        """Queue `data` for group[name]; returns the row it will start at."""
        start = self.rows.get(name, 0)
        self.rows[name] = start + len(data)
        self.parts.setdefault(name, []).append(data)
        self.nbytes += data.nbytes
        if name == "features":
            self.frames += len(data)
        return start


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
        self._pending: dict[str, _Pending] = {}
        self._new_rows: dict[str, dict] = {}  # key -> index row added since the last commit
        self._files: dict[str, dict] | None = None  # uri -> committed `files` row, read on first use
        self._new_files: dict[str, dict] = {}  # uri -> `files` row staged for the next commit
        self._forget_files: set[str] = set()  # uris whose `files` row the next commit drops
        self._trusted_changes = 0  # staged rows a later run could trust
        self._trusted_bytes = 0  # ... and the bytes of those files: what they spare a later refresh
        self._shards: dict[str, _ShardBuffer] = {}
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
            self = cls(uri, open_repo(uri, create=True), branch, chunk_frames, spill_frames, lock)
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
            raise StoreMismatchError(f"store {uri!r} has layout {attrs.get('lawam_layout')}, "
                                     f"this lawam writes {STORE_LAYOUT_VERSION}")
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
        sources = dict(self.root.attrs.get("sources", {}))
        entry = {**sources.get(ref.source, {}), "kind": ref.kind, "sampling": params.to_dict()}
        if sources.get(ref.source) != entry:  # written once per source and run, not per episode
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
        self.session = self.repo.writable_session(self.branch)
        self.root = zarr.open_group(self.session.store, mode="a")
        self.index = read_index(self.root)
        self._shards.clear()
        self._seq += 1
        # Rows the last index-writing commit added carry no id yet (a snapshot cannot name
        # itself): it is the parent, or the newest ingest before label commits.
        if self.index["store_version"].null_count:
            self.index = fill_store_version(self.index, store_commit_at(self.repo, self.session.snapshot_id))
        keys = pc.binary_join_element_wise(self.index["source"], self.index["episode_id"], "/")
        self._row_of = {k: i for i, k in enumerate(keys.to_pylist())}

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
        """Sort refs into work to do and work already committed. An unchanged episode whose
        instruction text changed (an edited manifest) is not re-encoded: its catalog row is
        updated in the next commit. A quarantined episode is retried only when its input
        changed (its ingest hash differs) or with `retry_quarantined`; otherwise it is held."""
        hashes = self.index.column("content_hash").to_pylist()
        status = self.index.column("status").to_pylist()
        instructions = self.index.column("instruction").to_pylist()
        plan = Plan([], [])
        for ref in refs:
            i = self._row_of.get(ref.key)
            same = i is not None and hashes[i] == ingest_hash(ref, params_for(ref))
            if same and status[i] == EpisodeStatus.OK:
                plan.skipped.append(ref)
                if instructions[i] != ref.instruction:
                    row = self.index.slice(i, 1).to_pylist()[0]
                    self._new_rows[ref.key] = {**row, "instruction": ref.instruction, "store_version": None}
                    plan.retitled.append(ref)
            elif same and status[i] == EpisodeStatus.QUARANTINED and not retry_quarantined:
                plan.held.append(ref)
            else:
                plan.todo.append(ref)
        return plan

    # -- writing -----------------------------------------------------------------------
    def start_episode(self, ref: EpisodeRef, params: SamplingParams) -> None:
        self._pending[ref.key] = _Pending(ref, ingest_hash(ref, params))
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
                buf = self._shards[shard] = _ShardBuffer(shard, flushed_at=self._opened_at)
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

    def _flush(self, buf: _ShardBuffer) -> None:
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
        i = self._row_of.get(ref.key)
        if i is not None:
            row = {c: self.index.column(c)[i].as_py()
                   for c in ("status", "failures", "failed_since", "ingested_at")}
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
        ).as_dict()

    # -- remembered file hashes ------------------------------------------------------------
    def committed_files(self) -> dict[str, dict]:
        """uri -> the `files` row (FILES_SCHEMA) the session's parent commit holds."""
        if self._files is None:
            self._files = {r["uri"]: r for r in read_files(self.root).to_pylist()}
        return self._files

    def remember_files(self, records: Iterable) -> int:
        """Stage source files' identity -> digest records (`pipeline.sources.hashing.FileRecord`s,
        or mappings with the FILES_SCHEMA fields) to be written with the next commit; returns
        how many differ from the committed ones. They ride along with the next commit of
        episodes; alone they make a commit only when their trusted records cover at least
        `remember_alone_bytes` of files (a later refresh is then spared reading them: e.g. after
        a restore touched every file), so a refresh that changed no episode keeps the store
        version unchanged. Records whose `trusted()` is False (racy: hashed right after a
        write) never count."""
        committed = self.committed_files()
        changed = 0
        for rec in records:
            row = rec._asdict() if hasattr(rec, "_asdict") else dict(rec)
            row = {name: row.get(name) for name in FILES_SCHEMA.names}
            old = committed.get(row["uri"])
            if old is not None and all(old[k] == row[k] or (old[k] in (0, "") and row[k] is None)
                                       for k in FILES_SCHEMA.names):
                continue
            self._new_files[row["uri"]] = row
            if getattr(rec, "trusted", lambda: True)():
                self._trusted_changes += 1
                self._trusted_bytes += row["size"] or 0
            changed += 1
        return changed

    def forget_files(self, under: Iterable[str], seen: Iterable[str]) -> int:
        """Stage dropping the `files` rows of files under the source roots `under` (each
        enumerated whole by this run) that are not in `seen`: deleted, or no longer part of
        their source. Returns how many. Like remembered hashes, this rides along with the next
        commit of episodes and never makes one alone; episodes of those files stay."""
        roots = tuple(r.rstrip("/") + "/" for r in under)
        if not roots:
            return 0
        seen = set(seen) | set(self._new_files)
        gone = {uri for uri in self.committed_files() if uri.startswith(roots) and uri not in seen}
        self._forget_files |= gone
        return len(gone)

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
        if not self._new_rows and (not self._trusted_changes or self._trusted_bytes < self.remember_alone_bytes):
            self._sync_catalog_file()  # a run killed between its commit and the Parquet copy
            return None
        self.flush(force=True)
        if self._new_files or self._forget_files:
            files = {uri: row for uri, row in {**self.committed_files(), **self._new_files}.items()
                     if uri not in self._forget_files}
            write_index(self.root, pa.Table.from_pylist(list(files.values()), schema=FILES_SCHEMA),
                        FILES_SCHEMA, FILES_GROUP)
        replaced = {self._row_of[k] for k in self._new_rows if k in self._row_of}
        keep = pa.array([i not in replaced for i in range(self.index.num_rows)], pa.bool_())
        new = pa.Table.from_pylist(list(self._new_rows.values()), schema=INDEX_SCHEMA)
        table = pa.concat_tables([self.index.filter(keep), new])
        write_index(self.root, table)
        self._drop_dead_shards(replaced, table)
        version = self.session.commit(message, metadata={"lawam_run": self.run_id, **(metadata or {})})
        log.info("committed %s: %d episodes (+%d)", version, table.num_rows, len(self._new_rows))
        self.parent_version = version
        self._new_rows.clear()
        if self._new_files or self._forget_files:
            self._files = files
            self._new_files, self._trusted_changes, self._trusted_bytes = {}, 0, 0
            self._forget_files = set()
        pending_spills = {k: p for k, p in self._pending.items() if p.spilled is not None}
        self._begin()
        for p in pending_spills.values():  # re-open their shards in the new session
            p.spilled = self.root[f"shards/{p.spilled_name}"]
        try:
            write_catalog_file(self.uri, self.index, version)
        except OSError as e:  # the commit is what counts; the Parquet copy is a convenience
            log.warning("could not write catalog.parquet: %s (the next run rewrites it)", e)
        return version

    def _drop_dead_shards(self, replaced: set[int], table: pa.Table) -> None:
        """Remove from the tree the shards whose every episode was redone: older versions keep
        them (and `lawam gc` reclaims their chunks once those versions expire); the new one no
        longer points at them, so their bytes are not kept alive by every later version."""
        if not replaced:
            return
        shards = self.index.column("shard")
        dead = {shards[i].as_py() for i in replaced} - set(table.column("shard").to_pylist()) - {None}
        dead -= {p.spilled_name for p in self._pending.values()}
        for name in sorted(dead):
            del self.root[f"shards/{name}"]
            log.info("shard %s: every episode redone, dropped from the new version", name)

    def _sync_catalog_file(self) -> None:
        """Rewrite catalog.parquet if it does not describe the branch tip this writer holds."""
        try:
            if sync_catalog_file(self.uri, self.index, self.parent_version):
                log.info("catalog.parquet rewritten for %s", self.parent_version)
        except OSError as e:
            log.warning("could not write catalog.parquet: %s (the next run rewrites it)", e)
