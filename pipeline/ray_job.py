"""The Ray side of an ingest: decode tasks, an encoder actor pool, and the driver loop.

Stages, top-down:

1. decode  — one streaming-generator task per episode (1 CPU) yields blocks of frames
             picked by timestamp; backpressure pauses it while its blocks wait, so memory
             stays bounded whatever the video length.
2. encode  — `EncoderActor`s (one per GPU, or one using every core) receive block refs
             straight from the decoders: pixels never pass through the driver.
3. write   — the driver gets float16 features back (small), hands them to the store writer
             in episode order, and quarantines episodes whose decode failed.

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
from pipeline.episode_frames import decode_episode_blocks  # noqa: E402
from pipeline.errors import classify  # noqa: E402
from pipeline.progress import Bar  # noqa: E402
from pipeline.ray_runtime import INFRA_ERRORS, ensure_ray  # noqa: E402
from pipeline.sources import load_actions  # noqa: E402
from pipeline.store import StoreWriter  # noqa: E402
from pipeline.store.backend import error_summary  # noqa: E402
from schemas import EncoderConfig  # noqa: E402
from schemas.records import EpisodeRef  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["INFRA_ERRORS", "IngestRun", "encoder_pool", "ensure_ray"]


@ray.remote
class EncoderActor:
    """Holds one frozen encoder; built here, on the worker, never pickled."""

    def __init__(self, cfg: EncoderConfig, threads: int):
        import torch

        torch.set_num_threads(threads)  # Ray sets OMP threads to the actor's num_cpus; use them all
        self.encoder = FrozenEncoder(cfg)

    def encode(self, block: dict) -> tuple[np.ndarray, np.ndarray]:
        return self.encoder.encode(block["frames"]), block["timestamps"]


def encoder_pool(cfg: EncoderConfig, n: int | None = None) -> list:
    """One actor per GPU (bf16 on CUDA), else one actor whose torch threads use every core."""
    gpus = int(ray.cluster_resources().get("GPU", 0)) if cfg.device != "cpu" else 0
    if gpus:
        return [EncoderActor.options(num_gpus=1, num_cpus=1).remote(cfg, 4) for _ in range(n or gpus)]
    n = n or 1
    threads = max(1, (os.cpu_count() or 1) // n)
    return [EncoderActor.options(num_cpus=1).remote(cfg, threads) for _ in range(n)]


decode_task = ray.remote(num_cpus=1)(decode_episode_blocks)
# Zero CPUs: reading a few parquet rows must never wait behind decode tasks that are
# themselves paused by backpressure until the driver (waiting on these actions) reads on.
actions_task = ray.remote(num_cpus=0)(load_actions)


def quarantinable(e: BaseException) -> bool:
    """Only bad input quarantines an episode (`schemas.errors`): `classify` looks through
    Ray's RayTaskError to the original exception. Infrastructure and resource faults and
    bugs are raised instead, after the episodes already complete are committed."""
    return classify(e) == "bad_input"


def reason(e: BaseException) -> str:
    """One line for the catalog: the innermost cause, without Ray's traceback wrapping."""
    while getattr(e, "cause", None) is not None and e.cause is not e:
        e = e.cause
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}".strip(": ")


@dataclass
class _Episode:
    ref: EpisodeRef
    params: dict
    actions: ray.ObjectRef
    blocks: deque = field(default_factory=deque)  # encode refs, in frame order
    done: set = field(default_factory=set)  # encode refs that finished
    decoded_all: bool = False
    frames: int = 0
    error: str | None = None


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

    def __init__(self, writer: StoreWriter, actors: list, params_for: Callable[[EpisodeRef], dict],
                 block_frames: int, decoder: str, bar: Bar, commit_every_s: float):
        self.writer, self.actors, self.params_for = writer, actors, params_for
        self.block_frames, self.decoder, self.bar = block_frames, decoder, bar
        self.commit_every_s = commit_every_s
        self.stats = RunStats()
        self._gens: dict = {}  # decode generator -> episode
        self._inflight: dict = {}  # encode ref -> episode
        self._next_actor = 0
        self._last_commit = time.monotonic()
        self._decode_cpus = 1.0

    def run(self, todo: list[EpisodeRef]) -> RunStats:
        queue = deque(todo)
        # Every CPU the encoders leave free decodes (a GPU encoder outruns one decoder by far);
        # at least two per encoder so the next episode is decoding when one ends.
        spare_cpus = max(0, int(ray.cluster_resources().get("CPU", 1)) - len(self.actors))
        max_decoders, max_inflight = max(2 * len(self.actors), spare_cpus), 2 * len(self.actors) + 1
        # Decoders never claim the encoders' CPUs: with 2 CPUs, two whole-CPU decoders scheduled
        # before the actor starts held both, paused by backpressure, waiting on an actor that
        # could never be placed (a deadlock seen on a loaded 2-core machine).
        self._decode_cpus = round(min(1.0, spare_cpus / max_decoders), 4)
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
                        ep = self._inflight.pop(r)
                        ep.done.add(r)
                        self._flush(ep)
        except BaseException as failure:
            # Not an episode's fault (infrastructure, a full disk, a bug) or an interrupt: keep
            # every episode already complete, then raise the original error.
            try:
                self.commit("ingest (interrupted)")
            except Exception as e:  # noqa: BLE001 - the original error is the one to report
                log.warning("could not commit the episodes completed before %s: %s", type(failure).__name__,
                            error_summary(e))
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

    def _start(self, ref: EpisodeRef) -> None:
        p = self.params_for(ref)
        self.writer.start_episode(ref, p)
        gen = decode_task.options(num_returns="streaming", _generator_backpressure_num_objects=2,
                                  num_cpus=self._decode_cpus).remote(
            ref, fps=p["fps"], size=p["size"], resize=p["resize"], max_seconds=p["max_seconds"],
            block_frames=self.block_frames, decoder=self.decoder)
        self._gens[gen] = _Episode(ref, p, actions_task.remote(ref))

    def _pull(self, gen) -> None:
        ep = self._gens[gen]
        try:
            block = next(gen)
        except StopIteration:
            del self._gens[gen]
            ep.decoded_all = True
            self._flush(ep)
            return
        actor = self.actors[self._next_actor % len(self.actors)]
        self._next_actor += 1
        enc = actor.encode.remote(block)
        self._inflight[enc] = ep
        ep.blocks.append(enc)

    def _flush(self, ep: _Episode) -> None:
        """Write the episode's encoded blocks that are ready, in order; finish it when all are."""
        while ep.blocks and ep.blocks[0] in ep.done:
            ref = ep.blocks.popleft()
            if ep.error is not None:
                continue
            try:
                feats, stamps = ray.get(ref)
            except Exception as e:
                if not quarantinable(e):  # infrastructure, resource or a bug: stop the run
                    raise
                ep.error = reason(e)
                continue
            self.writer.append_frames(ep.ref, feats, stamps)
            now = time.monotonic()
            if self.stats.first_block_at is None:
                self.stats.first_block_at, self.stats.first_block_frames = now, len(feats)
            self.stats.last_block_at = now
            ep.frames += len(feats)
            self.stats.frames += len(feats)
            self.bar.add_frames(len(feats))
        if ep.decoded_all and not ep.blocks:
            self._finish(ep)

    def _finish(self, ep: _Episode) -> None:
        error = ep.error
        if error is None:
            try:
                self.writer.finish_episode(ep.ref, ray.get(ep.actions), ep.params["fps"])
                self.stats.added += 1
                self.stats.seconds_of_video += ep.frames / ep.params["fps"]
            except Exception as e:
                if not quarantinable(e):  # infrastructure, resource or a bug: stop the run
                    raise
                error = reason(e)  # bad actions or no frames: this episode only
        if error is not None:
            self.writer.quarantine(ep.ref, error, ep.params)
            self.stats.quarantined.append((ep.ref.key, error))
        self.bar.advance(1)
        if time.monotonic() - self._last_commit > self.commit_every_s:
            self.commit(f"ingest (partial): {self.stats.added} episodes")

    def commit(self, message: str) -> None:
        version = self.writer.commit(message, {"added": self.stats.added,
                                               "quarantined": len(self.stats.quarantined)})
        self.stats.last_version = version or self.stats.last_version
        self._last_commit = time.monotonic()
