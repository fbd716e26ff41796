"""The ingest step, apart from where it runs: packed blocks of decoded, encoded frames in,
whole episodes into the store writer out, committed or quarantined.

Promises (DESIGN.md, "Bad input and failures"):
- An episode's features reach the writer in frame order and it ends exactly once: finished
  (its rows are written) or quarantined with a one-line reason.
- Only bad input (`schemas.errors.BadInputError`, sorted by `pipeline.errors.classify`
  through Ray's wrappers) quarantines an episode, and only that episode: its batch-mates are
  written. Any other failure (infrastructure, a full disk, a bug) is raised by the caller
  after `abort` committed the episodes already complete.
- Long runs commit every `commit_every_s` seconds, so a killed run loses at most that much.

An executor (`pipeline.ingest.ray_executor`: decode tasks and encoder actors on Ray;
`pipeline.ingest.local_executor`: one process) only schedules decode and encode and hands the
results here in each batch's order; this module never imports Ray (datatrove's split between
a pipeline step and its executors).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import classify, one_line
from pipeline.progress import Bar
from pipeline.store import StoreWriter
from schemas.identity import SamplingParams
from schemas.records import EpisodeRef

log = logging.getLogger(__name__)


def quarantinable(e: BaseException) -> bool:
    """Only bad input quarantines an episode (`schemas.errors`): `classify` looks through
    Ray's RayTaskError to the original exception."""
    return classify(e) == "bad_input"


@dataclass
class Episode:
    """One episode in flight: where its frames go and whether it failed."""

    ref: EpisodeRef
    params: SamplingParams
    frames: int = 0
    error: str | None = None
    ended: bool = False


@dataclass
class RunStats:
    added: int = 0
    frames: int = 0
    seconds_of_video: float = 0.0
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    last_version: str | None = None
    first_block_at: float | None = None  # monotonic time the first features came back
    first_block_frames: int = 0
    last_block_at: float | None = None

    @property
    def steady_frames_per_s(self) -> float | None:
        """Throughput once the pipeline is full (model loaded, first block through)."""
        if self.first_block_at is None or self.last_block_at is None or self.last_block_at <= self.first_block_at:
            return None
        return (self.frames - self.first_block_frames) / (self.last_block_at - self.first_block_at)


class EpisodeAssembler:
    """Turns the blocks of a batch of episodes into written, finished or quarantined episodes.

    Per batch: `begin(refs)` → for each packed block in order, `frames(...)` (or
    `frames_refused(...)` when the encoder refused them) then `outcomes(meta)` → `end(batch)`.
    A block's metadata `meta` is the packed block's bookkeeping (`pipeline.ingest.frames`):
    "segments" [(episode index, frames)], "finished" [(index, actions)], "failed" [(index, why)]."""

    def __init__(self, writer: StoreWriter, params_for: Callable[[EpisodeRef], SamplingParams], bar: Bar,
                 commit_every_s: float = 300.0):
        self.writer, self.params_for, self.bar = writer, params_for, bar
        self.commit_every_s = commit_every_s
        self.stats = RunStats()
        self._last_commit = time.monotonic()

    def begin(self, refs: list[EpisodeRef]) -> list[Episode]:
        """Open a batch of episodes in the writer; their blocks may then arrive."""
        episodes = []
        for ref in refs:
            p = self.params_for(ref)
            self.writer.start_episode(ref, p)
            episodes.append(Episode(ref, p))
        return episodes

    def frames(self, episodes: list[Episode], meta: dict, feats: np.ndarray, stamps: np.ndarray) -> None:
        """The features of one packed block (its segments in order) to their episodes."""
        now = time.monotonic()
        offset = 0
        for i, k in meta["segments"]:
            ep = episodes[i]
            if ep.error is None:
                self.writer.append_frames(ep.ref, feats[offset : offset + k], stamps[offset : offset + k])
                ep.frames += k
                self.stats.frames += k
                if self.stats.first_block_at is None:
                    self.stats.first_block_at, self.stats.first_block_frames = now, k
            offset += k
        self.stats.last_block_at = now
        self.bar.add_frames(offset)

    def frames_refused(self, episodes: list[Episode], meta: dict, e: BaseException) -> None:
        """The encoder raised on one block: its episodes fail when that is bad input (frames it
        cannot take); anything else stops the run."""
        if not quarantinable(e):
            raise e
        for i, _ in meta["segments"]:
            episodes[i].error = episodes[i].error or one_line(e)

    def outcomes(self, episodes: list[Episode], meta: dict) -> None:
        """End the episodes whose outcome the block carries (their frames all came before)."""
        for i, why in meta["failed"]:
            ep = episodes[i]
            ep.error = ep.error or why
            self._finish(ep, None)
        for i, actions in meta["finished"]:
            self._finish(episodes[i], actions)

    def end(self, episodes: list[Episode]) -> None:
        """A batch's blocks are all through: every episode must have ended (the decode step
        reports each one; anything else is a bug in it)."""
        lost = [ep for ep in episodes if not ep.ended]
        if lost:
            raise RuntimeError(f"decode ended without an outcome for {lost[0].ref.key} (+{len(lost) - 1} more)")

    def _finish(self, ep: Episode, actions) -> None:
        ep.ended = True
        error = ep.error
        if error is None:
            try:
                self.writer.finish_episode(ep.ref, actions, ep.params.fps)
                self.stats.added += 1
                self.stats.seconds_of_video += ep.frames / ep.params.fps
            except Exception as e:
                if not quarantinable(e):  # infrastructure, resource or a bug: stop the run
                    raise
                error = one_line(e)  # bad actions or no frames: this episode only
        if error is not None:
            self.writer.quarantine(ep.ref, error, ep.params)
            self.stats.quarantined.append((ep.ref.key, error))
        self.bar.advance(1)
        self.writer.flush()  # outside the episode's try: a failed write is the store's fault, not the episode's
        if time.monotonic() - self._last_commit > self.commit_every_s:
            self.commit(f"ingest (partial): {self.stats.added} episodes")

    def commit(self, message: str) -> None:
        version = self.writer.commit(message, {"added": self.stats.added,
                                               "quarantined": len(self.stats.quarantined)})
        self.stats.last_version = version or self.stats.last_version
        self._last_commit = time.monotonic()

    def complete(self) -> RunStats:
        """The run is through: commit it (a failing commit, a full disk, is raised)."""
        self.commit(f"ingest: +{self.stats.added} episodes, {len(self.stats.quarantined)} quarantined")
        return self.stats

    def abort(self, failure: BaseException) -> None:
        """The run stops on `failure` (not an episode's fault, or an interrupt): keep every
        episode already complete; the caller raises `failure`."""
        try:
            self.commit("ingest (interrupted)")
        except Exception as e:  # noqa: BLE001 - the original error is the one to report
            log.warning("could not commit the episodes completed before %s: %s", type(failure).__name__,
                        one_line(e))
