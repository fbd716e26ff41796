"""What the writer holds before it writes: episodes in flight, and finished episodes of a shard
written behind.

Promise: an episode's rows in its shard are fixed the moment it finishes (so its index row is
final at once), though its data may be written later, in one append per array with other
episodes of the shard: a Zarr append costs milliseconds whatever its size, so writing each
short clip on its own was what an ingest of many short clips cost. Every array of a shard
keeps its rows in step: `state` row for row beside `actions`, NaN rows for an episode without
state among episodes with it (`format.no_state`). A misfit (actions of another width) fails
that episode before anything of it is queued, not the shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import zarr

from pipeline.store.format import no_state
from schemas.errors import BadInputError
from schemas.records import EpisodeRef


@dataclass
class PendingEpisode:
    ref: EpisodeRef
    ingest_hash: str
    blocks: list[np.ndarray] = field(default_factory=list)
    stamps: list[np.ndarray] = field(default_factory=list)
    n: int = 0
    spilled: zarr.Group | None = None  # own shard once longer than spill_frames
    spilled_name: str | None = None


@dataclass
class ShardBuffer:
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
