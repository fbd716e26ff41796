"""The Ray side of an ingest: decode tasks, an encoder actor pool, and the driver loop.

Stages, top-down:

1. decode  — one streaming-generator task per batch of episodes (one episode when there
             are few, up to `max_batch_episodes` short ones when there are many) yields
             blocks of frames picked by timestamp, packing the frames of consecutive
             episodes, each block preceded by its metadata (which episode each frame belongs
             to, which episodes ended or failed, their actions); backpressure pauses it while
             its blocks wait, so memory stays bounded whatever the video length.
2. encode  — `EncoderActor`s (one per GPU, or one using every core) receive block refs
             straight from the decoders: pixels never pass through the driver.
3. write   — the driver gets float16 features back (small), hands them to the store writer
             in episode order, and quarantines episodes whose decode failed (a failure is
             one episode's: its batch-mates are written).

Only bad input (`schemas.errors.BadInputError`: a corrupt video, unparsable actions) is the
episode's fault and quarantines it. Anything else stops the run after committing the
episodes already complete, and is raised: an infrastructure fault (a dead actor or worker,
lost objects, the object store) so the caller (a Prefect retry, a person) can run it again,
the re-run skipping what was committed; a full or read-only disk, not retried; a bug, loudly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# Ray reads this at import: keep a local instance on 127.0.0.1 (never the machine's address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from pipeline.encode import FrozenEncoder  # noqa: E402
from pipeline.errors import classify, one_line  # noqa: E402
from pipeline.ingest.frames import decode_task_items  # noqa: E402
from pipeline.progress import Bar  # noqa: E402
from pipeline.ray_runtime import ensure_ray  # noqa: E402
from pipeline.store import StoreWriter  # noqa: E402
from schemas import EncoderConfig  # noqa: E402
from schemas.records import EpisodeRef  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["IngestRun", "encoder_pool", "ensure_ray"]


class ThreadTuner:
    """Picks torch's thread count for an encoder on CPU by measuring, not by guessing.

    All cores win when the encoder is the bottleneck and the decoders mostly wait; one
    thread wins when decoders keep the cores busy (many short clips, a light model): each
    operator's threads then wait on one another behind the decoders (measured here, 2 cores,
    many one-second clips and a tiny ViT: 4 episodes/s with 2 threads, 10 with 1).

    So in a tuning window the choices are timed in turn, up to `trials` calls each, and the
    faster per frame is kept. A window ends early once one choice is `clear` times slower
    than the other (one slow call, not `trials`, on a run whose answer is plain); the next
    window comes `period` calls later, twice as late each time the answer stays the same
    (up to `max_period`), so that a run whose bottleneck moves is followed and a steady one
    pays for few slow calls."""

    def __init__(self, most: int, trials: int = 3, period: int = 100, tune: bool = True,
                 clear: float = 1.5, max_period: int = 1600):
        self.choices = sorted({1, most} if tune else {most}, reverse=True)
        self.trials, self.base_period, self.period, self.max_period = trials, period, period, max_period
        self.clear = clear
        self.best = self.choices[0]
        self._calls = 0
        self._next_window = 1  # the first call warms up with the current choice
        self._queue: list[int] = []  # thread counts still to time in the current window
        self._seconds: dict[int, list[float]] = {c: [] for c in self.choices}

    def threads(self) -> int:
        """The thread count for the next call."""
        if len(self.choices) > 1 and not self._queue and self._calls >= self._next_window:
            self._queue = [c for _ in range(self.trials) for c in self.choices]
        return self._queue[0] if self._queue else self.best

    def record(self, threads: int, frames: int, seconds: float) -> None:
        self._calls += 1
        if not self._queue or threads != self._queue[0]:
            return
        self._queue.pop(0)
        if frames:
            self._seconds[threads].append(seconds / frames)
        per_frame = {c: float(np.median(v)) for c, v in self._seconds.items() if v}
        plain = len(per_frame) == len(self.choices) and max(per_frame.values()) >= self.clear * min(per_frame.values())
        if self._queue and not plain:
            return
        if per_frame:  # window over: keep the faster; look again later, later still if nothing changed
            best = min(per_frame, key=per_frame.get)
            self.period = min(2 * self.period, self.max_period) if best == self.best else self.base_period
            self.best = best
        self._queue, self._seconds = [], {c: [] for c in self.choices}
        self._next_window = self._calls + self.period


@ray.remote
class EncoderActor:
    """Holds one frozen encoder; built here, on the worker, never pickled."""

    def __init__(self, cfg: EncoderConfig, threads: int):
        self.encoder = FrozenEncoder(cfg)
        # On a GPU the threads only feed it; on CPU the count that measures faster is kept.
        self.tuner = ThreadTuner(threads, tune=self.encoder.device.type == "cpu")
        self._threads = 0

    def encode(self, block: dict) -> tuple[np.ndarray, np.ndarray]:
        import torch

        threads = self.tuner.threads()
        if threads != self._threads:
            torch.set_num_threads(threads)  # Ray sets OMP threads to the actor's num_cpus: choose ourselves
            self._threads = threads
        t = time.perf_counter()
        out = self.encoder.encode(block["frames"])
        self.tuner.record(threads, len(out), time.perf_counter() - t)
        return out, block["timestamps"]


def encoder_pool(cfg: EncoderConfig, n: int | None = None) -> list:
    """One actor per GPU (bf16 on CUDA), else one actor whose torch threads use every core, or
    one thread when that measures faster (`ThreadTuner`)."""
    gpus = int(ray.cluster_resources().get("GPU", 0)) if cfg.device != "cpu" else 0
    if gpus:
        return [EncoderActor.options(num_gpus=1, num_cpus=1).remote(cfg, 4) for _ in range(n or gpus)]
    n = n or 1
    threads = max(1, (os.cpu_count() or 1) // n)
    return [EncoderActor.options(num_cpus=1).remote(cfg, threads) for _ in range(n)]


# One task decodes a batch of episodes (`decode_packed`), actions loaded there too, so an
# episode costs no task of its own; see `decode_task_items` for what it yields.
decode_task = ray.remote(num_cpus=1)(decode_task_items)


def quarantinable(e: BaseException) -> bool:
    """Only bad input quarantines an episode (`schemas.errors`): `classify` looks through
    Ray's RayTaskError to the original exception. Infrastructure and resource faults and
    bugs are raised instead, after the episodes already complete are committed."""
    return classify(e) == "bad_input"


@dataclass
class _Episode:
    ref: EpisodeRef
    params: dict
    frames: int = 0
    error: str | None = None
    ended: bool = False


@dataclass
class _Batch:
    """Episodes decoded by one task, and its packed blocks in frame order."""

    episodes: list[_Episode]
    entries: deque = field(default_factory=deque)  # [metadata, encode ref or None], in order
    done: set = field(default_factory=set)  # encode refs that finished
    meta: dict | None = None  # metadata whose frames block is the generator's next item
    decoded_all: bool = False


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


class IngestRun:
    """Drives decode → encode → write for a list of episodes into an open StoreWriter."""

    # Episodes per decode task: one task per episode when there are few (long videos keep
    # every decoder busy), up to this many when there are many short ones.
    max_batch_episodes = 32
    batches_per_decoder = 8  # at least this many batches per decoder keep the end of a run balanced

    def __init__(self, writer: StoreWriter, actors: list, params_for: Callable[[EpisodeRef], dict],
                 block_frames: int, decoder: str, bar: Bar, commit_every_s: float):
        self.writer, self.actors, self.params_for = writer, actors, params_for
        self.block_frames, self.decoder, self.bar = block_frames, decoder, bar
        self.commit_every_s = commit_every_s
        self.stats = RunStats()
        self._gens: dict = {}  # decode generator -> batch
        self._inflight: dict = {}  # encode ref -> batch
        self._next_actor = 0
        self._last_commit = time.monotonic()
        self._decode_cpus = 1.0

    def run(self, todo: list[EpisodeRef]) -> RunStats:
        """Ingest `todo` and commit; on any failure, commit the episodes already complete, give
        the encoders' and decoders' CPUs back, and raise."""
        # Every CPU the encoders leave free decodes (a GPU encoder outruns one decoder by far);
        # at least two per encoder so the next batch is decoding when one ends.
        spare_cpus = max(0, int(ray.cluster_resources().get("CPU", 1)) - len(self.actors))
        max_decoders, max_inflight = max(2 * len(self.actors), spare_cpus), 2 * len(self.actors) + 1
        # Decoders never claim the encoders' CPUs: with 2 CPUs, two whole-CPU decoders scheduled
        # before the actor starts held both, paused by backpressure, waiting on an actor that
        # could never be placed (a deadlock seen on a loaded 2-core machine).
        self._decode_cpus = round(min(1.0, spare_cpus / max_decoders), 4)
        # Many short episodes share a task (a task and an encoder call per one-second clip cost
        # more than the clip), as long as each decoder still gets `batches_per_decoder` batches.
        per_task = max(1, min(self.max_batch_episodes, len(todo) // (self.batches_per_decoder * max_decoders)))
        queue = deque(todo[i : i + per_task] for i in range(0, len(todo), per_task))
        try:
            while queue or self._gens or self._inflight:
                while queue and len(self._gens) < max_decoders:
                    self._start(queue.popleft())
                waitables = list(self._inflight) + (list(self._gens) if len(self._inflight) < max_inflight else [])
                ready, _ = ray.wait(waitables, num_returns=1)
                for r in ready:
                    if r in self._gens:
                        self._pull(r)
                    else:
                        batch = self._inflight.pop(r)
                        batch.done.add(r)
                        self._drain(batch)
            # The last commit fails like any step (a full disk): inside, so the CPUs are given back.
            self.commit(f"ingest: +{self.stats.added} episodes, {len(self.stats.quarantined)} quarantined")
        except BaseException as failure:
            # Not an episode's fault (infrastructure, a full disk, a bug) or an interrupt: keep
            # every episode already complete, then raise the original error.
            try:
                self.commit("ingest (interrupted)")
            except Exception as e:  # noqa: BLE001 - the original error is the one to report
                log.warning("could not commit the episodes completed before %s: %s", type(failure).__name__,
                            one_line(e))
            self._release()
            raise
        return self.stats

    def _release(self) -> None:
        """A failed run gives its CPUs back now: the raised error's traceback keeps this run (and
        its actor handles) alive, and a retry in the same process (Prefect's, a notebook's)
        would otherwise wait forever for the CPUs the old encoders and paused decoders hold."""
        for gen in list(self._gens):
            with contextlib.suppress(Exception):  # already finished or gone: nothing to give back
                ray.cancel(gen, force=True)
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self._gens.clear()
        self._inflight.clear()

    def _start(self, refs: list[EpisodeRef]) -> None:
        episodes = []
        for ref in refs:
            p = self.params_for(ref)
            self.writer.start_episode(ref, p)
            episodes.append(_Episode(ref, p))
        gen = decode_task.options(num_returns="streaming", _generator_backpressure_num_objects=4,
                                  num_cpus=self._decode_cpus).remote(
            [(e.ref, e.params) for e in episodes], self.block_frames, self.decoder)
        self._gens[gen] = _Batch(episodes)

    def _pull(self, gen) -> None:
        batch = self._gens[gen]
        try:
            item = next(gen)
        except StopIteration:
            del self._gens[gen]
            batch.decoded_all = True
            self._drain(batch)
            return
        if batch.meta is None:
            # Metadata is small: Ray keeps it in this process's memory, no object-store trip.
            # A failure here is the task's own (episodes' failures are in the metadata):
            # an infrastructure fault, or a bug; either stops the run.
            meta = ray.get(item)
            if meta["n"]:
                batch.meta = meta  # its frames are the generator's next item
            else:
                batch.entries.append([meta, None])
                self._drain(batch)
            return
        actor = self.actors[self._next_actor % len(self.actors)]
        self._next_actor += 1
        enc = actor.encode.remote(item)
        self._inflight[enc] = batch
        batch.entries.append([batch.meta, enc])
        batch.meta = None

    def _drain(self, batch: _Batch) -> None:
        """Hand the batch's encoded blocks that are ready to the writer, in order, and end the
        episodes whose outcome they carry."""
        while batch.entries:
            meta, enc = batch.entries[0]
            if enc is not None and enc not in batch.done:
                break
            batch.entries.popleft()
            if enc is not None:
                batch.done.discard(enc)
                self._write(batch, meta, enc)
            for i, why in meta["failed"]:
                ep = batch.episodes[i]
                ep.error = ep.error or why
                self._finish(ep, None)
            for i, actions in meta["finished"]:
                self._finish(batch.episodes[i], actions)
        if batch.decoded_all and not batch.entries:
            lost = [ep for ep in batch.episodes if not ep.ended]
            if lost:  # decode_packed reports every episode: anything else is a bug in it
                raise RuntimeError(f"decode task ended without an outcome for {lost[0].ref.key} "
                                   f"(+{len(lost) - 1} more)")

    def _write(self, batch: _Batch, meta: dict, enc) -> None:
        try:
            feats, stamps = ray.get(enc)
        except Exception as e:
            if not quarantinable(e):  # infrastructure, resource or a bug: stop the run
                raise
            # the encoder refused these frames as bad input: their episodes fail
            for i, _ in meta["segments"]:
                batch.episodes[i].error = batch.episodes[i].error or one_line(e)
            return
        now = time.monotonic()
        offset = 0
        for i, k in meta["segments"]:
            ep = batch.episodes[i]
            if ep.error is None:
                self.writer.append_frames(ep.ref, feats[offset : offset + k], stamps[offset : offset + k])
                ep.frames += k
                self.stats.frames += k
                if self.stats.first_block_at is None:
                    self.stats.first_block_at, self.stats.first_block_frames = now, k
            offset += k
        self.stats.last_block_at = now
        self.bar.add_frames(offset)

    def _finish(self, ep: _Episode, actions) -> None:
        ep.ended = True
        error = ep.error
        if error is None:
            try:
                self.writer.finish_episode(ep.ref, actions, ep.params["fps"])
                self.stats.added += 1
                self.stats.seconds_of_video += ep.frames / ep.params["fps"]
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
