"""The Ray executor of an ingest: decode tasks, an encoder actor pool, and the driver loop
that hands each batch's blocks, in order, to the ingest step (`pipeline.ingest.assembler`).

Stages, top-down:

1. decode  — one streaming-generator task per batch of episodes (one episode when there
             are few, up to `max_batch_episodes` short ones when there are many) yields
             blocks of frames picked by timestamp, packing the frames of consecutive
             episodes, each block preceded by its metadata (which episode each frame belongs
             to, which episodes ended or failed, their actions); backpressure pauses it while
             its blocks wait, so memory stays bounded whatever the video length.
2. encode  — `EncoderActor`s (one per GPU, or one using every core) receive block refs
             straight from the decoders: pixels never pass through the driver.
3. write   — the driver gets float16 features back (small) and hands them to the
             `EpisodeAssembler` in each batch's frame order; it writes, quarantines and
             commits (see its promises: only bad input quarantines, and only its episode).

Anything that is not bad input stops the run after committing the episodes already
complete, and is raised: an infrastructure fault (a dead actor or worker, lost objects, the
object store) so the caller (a Prefect retry, a person) can run it again, the re-run
skipping what was committed; a full or read-only disk, not retried; a bug, loudly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

# Ray reads this at import: keep a local instance on 127.0.0.1 (never the machine's address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from pipeline.encode import FrozenEncoder  # noqa: E402
from pipeline.ingest.assembler import Episode, EpisodeAssembler, RunStats  # noqa: E402
from pipeline.ingest.frames import decode_task_items  # noqa: E402
from schemas import EncoderConfig  # noqa: E402
from schemas.records import EpisodeRef  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["EncoderActor", "RayExecutor", "ThreadTuner", "encoder_pool"]


class ThreadTuner:
    """Picks the thread count of an encoder on CPU by measuring, not by guessing (torch's
    threads, or which of the models OpenVINO / ONNX Runtime compiled per count runs).

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
        import torch

        torch.set_num_threads(threads)  # Ray sets OMP threads to the actor's num_cpus: choose ourselves
        self.encoder = FrozenEncoder(cfg)  # OpenVINO / ONNX Runtime compile for `threads` first
        # On a GPU the threads only feed it; on CPU the count that measures faster is kept.
        self.tuner = ThreadTuner(threads, tune=self.encoder.device.type == "cpu")

    def encode(self, block: dict) -> tuple[np.ndarray, np.ndarray]:
        threads = self.tuner.threads()
        self.encoder.set_threads(threads)  # torch's, or the compiled model's for that count (made once)
        t = time.perf_counter()
        out = self.encoder.encode(block["frames"])
        self.tuner.record(threads, len(out), time.perf_counter() - t)
        return out, block["timestamps"]


def encoder_pool(cfg: EncoderConfig, n: int | None = None) -> list:
    """One actor per GPU (torch on CUDA), else one actor whose runtime's threads use every
    core, or one thread when that measures faster (`ThreadTuner`). `cfg` has its runtime and
    precision resolved (`resolve_numerics`): every actor computes the store's numerics."""
    gpus = int(ray.cluster_resources().get("GPU", 0)) if cfg.device != "cpu" and cfg.runtime == "torch" else 0
    if gpus:
        return [EncoderActor.options(num_gpus=1, num_cpus=1).remote(cfg, 4) for _ in range(n or gpus)]
    n = n or 1
    threads = max(1, (os.cpu_count() or 1) // n)
    return [EncoderActor.options(num_cpus=1).remote(cfg, threads) for _ in range(n)]


# One task decodes a batch of episodes (`decode_packed`), actions loaded there too, so an
# episode costs no task of its own; see `decode_task_items` for what it yields.
decode_task = ray.remote(num_cpus=1)(decode_task_items)


@dataclass
class _Batch:
    """Episodes decoded by one task, and its packed blocks in frame order."""

    episodes: list[Episode]
    entries: deque = field(default_factory=deque)  # [metadata, encode ref or None], in order
    done: set = field(default_factory=set)  # encode refs that finished
    meta: dict | None = None  # metadata whose frames block is the generator's next item
    decoded_all: bool = False


class RayExecutor:
    """Schedules the ingest step (`EpisodeAssembler`) on Ray: decode tasks stream packed blocks
    straight to the encoder actors; the driver hands each batch's results to the assembler in
    order. Scheduling only: what a block means, what fails an episode and when to commit are
    the assembler's."""

    # Episodes per decode task: one task per episode when there are few (long videos keep
    # every decoder busy), up to this many when there are many short ones.
    max_batch_episodes = 32
    batches_per_decoder = 8  # at least this many batches per decoder keep the end of a run balanced

    def __init__(self, actors: list, block_frames: int, decoder: str):
        self.actors, self.block_frames, self.decoder = actors, block_frames, decoder
        self._gens: dict = {}  # decode generator -> batch
        self._inflight: dict = {}  # encode ref -> batch
        self._next_actor = 0
        self._decode_cpus = 1.0
        self.assembler: EpisodeAssembler | None = None

    def run(self, assembler: EpisodeAssembler, todo: list[EpisodeRef]) -> RunStats:
        """Ingest `todo` and commit; on any failure, commit the episodes already complete, give
        the encoders' and decoders' CPUs back, and raise."""
        self.assembler = assembler
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
            return assembler.complete()
        except BaseException as failure:
            assembler.abort(failure)
            self._release()
            raise

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
        episodes = self.assembler.begin(refs)
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
        """Hand the batch's encoded blocks that are ready to the assembler, in order."""
        while batch.entries:
            meta, enc = batch.entries[0]
            if enc is not None and enc not in batch.done:
                break
            batch.entries.popleft()
            if enc is not None:
                batch.done.discard(enc)
                try:
                    feats, stamps = ray.get(enc)
                except Exception as e:  # the assembler decides: bad input fails the block's episodes
                    self.assembler.frames_refused(batch.episodes, meta, e)
                else:
                    self.assembler.frames(batch.episodes, meta, feats, stamps)
            self.assembler.outcomes(batch.episodes, meta)
        if batch.decoded_all and not batch.entries:
            self.assembler.end(batch.episodes)
