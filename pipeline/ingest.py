"""Ingest: episode refs → decode (Ray tasks) → frozen encoder (Ray actor pool) → store.

    report = ingest_source(load_source("configs/sources/robot.yaml"), corpus)   # in a notebook

The stages, top-down:

1. plan     — diff the refs against the store's committed index; unchanged episodes are
              skipped before anything is decoded.
2. decode   — one Ray streaming-generator task per episode yields blocks of frames picked
              by timestamp; a task is paused by backpressure when its blocks are not
              consumed, so memory stays bounded whatever the video length.
3. encode   — a pool of `EncoderActor`s (one per GPU, or one using every CPU core) takes
              block refs straight from the decoders: pixels never pass through the driver.
4. write    — the driver receives float16 features (small), writes them in episode order,
              quarantines episodes whose decode failed, and commits every
              `commit_every_s` seconds and at the end.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

# Ray reads this at import: keep a local instance on 127.0.0.1 (never the machine's address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from pipeline.encode import FrozenEncoder, encoder_identity
from pipeline.episode_frames import decode_episode_blocks
from pipeline.progress import progress_bar
from pipeline.sources import iter_episodes, load_actions
from pipeline.sources.base import EpisodeRef
from pipeline.store import StoreWriter
from schemas import ConfigError, CorpusConfig, EncoderConfig, SamplingConfig, SourceSpec, StoreConfig

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    store: str
    version_before: str | None
    version_after: str | None
    added: int = 0
    skipped: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (episode key, reason)
    frames: int = 0
    hours: float = 0.0
    seconds: float = 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def to_markdown(self) -> str:
        rows = [
            ("episodes added", self.added), ("episodes skipped (unchanged)", self.skipped),
            ("episodes quarantined", len(self.quarantined)), ("frames encoded", self.frames),
            ("hours added", f"{self.hours:.3f}"), ("throughput", f"{self.frames_per_s:.1f} frames/s"),
            ("store version", f"{self.version_before or '(new)'} → {self.version_after or '(unchanged)'}"),
        ]
        md = f"## Ingest into `{self.store}`\n\n| | |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)
        if self.quarantined:
            md += "\n### Quarantined\n\n| episode | reason |\n|---|---|\n"
            md += "".join(f"| {k} | {r.replace('|', '/')} |\n" for k, r in self.quarantined)
        return md


def ensure_ray() -> None:
    """Local Ray by default (all cores, loopback only); `RAY_ADDRESS` selects a cluster."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)


@ray.remote
class EncoderActor:
    """Holds one frozen encoder; built here, on the worker, never pickled."""

    def __init__(self, cfg: EncoderConfig, threads: int):
        import torch

        torch.set_num_threads(threads)  # Ray sets OMP threads to the actor's num_cpus; use them all
        self.encoder = FrozenEncoder(cfg)

    def encode(self, block: dict) -> tuple[np.ndarray, np.ndarray]:
        return self.encoder.encode(block["frames"]), block["timestamps"]


_decode_task = ray.remote(num_cpus=1)(decode_episode_blocks)
# Zero CPUs: reading a few parquet rows must never wait behind decode tasks that are
# themselves paused by backpressure until the driver (waiting on these actions) reads on.
_actions_task = ray.remote(num_cpus=0)(load_actions)


@dataclass
class _Episode:
    ref: EpisodeRef
    fps: float
    actions: ray.ObjectRef
    blocks: deque = field(default_factory=deque)  # encode refs in frame order
    done: set = field(default_factory=set)
    decoded_all: bool = False
    error: str | None = None


def _reason(e: BaseException) -> str:
    """One line for the catalog: the innermost cause, without Ray's traceback wrapping."""
    while getattr(e, "cause", None) is not None and e.cause is not e:
        e = e.cause
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}".strip(": ")


def _encoder_pool(cfg: EncoderConfig, n: int | None) -> list:
    gpus = int(ray.cluster_resources().get("GPU", 0)) if cfg.device != "cpu" else 0
    if gpus:
        n = n or gpus
        return [EncoderActor.options(num_gpus=1, num_cpus=1).remote(cfg, 4) for _ in range(n)]
    n = n or 1
    threads = max(1, (os.cpu_count() or 1) // n)
    return [EncoderActor.options(num_cpus=1).remote(cfg, threads) for _ in range(n)]


def ingest_episodes(
    refs: Iterable[EpisodeRef],
    *,
    encoder: EncoderConfig,
    sampling: SamplingConfig,
    store: StoreConfig,
    fps_for: Callable[[EpisodeRef], float] | None = None,
    num_encoders: int | None = None,
    commit_every_s: float = 300.0,
    progress: bool = True,
) -> IngestReport:
    """Ingest `refs` into `store`. Plain function: no Prefect needed. Returns what it did;
    quarantined episodes are listed in the report, they do not raise."""
    t0 = time.monotonic()
    refs = list(refs)
    fps_for = fps_for or (lambda ref: sampling.fps)

    def params(ref: EpisodeRef) -> dict:
        return {"fps": fps_for(ref), "size": encoder.image_size, "resize": sampling.resize,
                "max_seconds": sampling.max_seconds}

    with StoreWriter.open(store.uri, encoder=encoder_identity(encoder), chunk_frames=store.chunk_frames,
                          branch=store.branch) as writer:
        report = IngestReport(store.uri, writer.parent_version, None)
        plan = writer.plan(refs, params)
        report.skipped = len(plan.skipped)
        log.info("%d episodes to ingest, %d unchanged", len(plan.todo), len(plan.skipped))
        if not plan.todo:  # nothing new: no Ray, no model, no commit
            report.seconds = time.monotonic() - t0
            return report
        ensure_ray()
        actors = _encoder_pool(encoder, num_encoders)  # models load on the workers while decoding starts
        queue = deque(plan.todo)
        gens: dict = {}
        inflight: dict = {}
        max_decoders = 2 * len(actors)
        max_inflight = 2 * len(actors) + 1
        last_commit = time.monotonic()
        with progress_bar("ingest", total=len(plan.todo), enabled=progress, unit="episodes") as bar:

            def finish(ep: _Episode) -> None:
                nonlocal last_commit
                error = ep.error
                if error is None:
                    try:
                        writer.finish_episode(ep.ref, ray.get(ep.actions), ep.fps)
                        report.added += 1
                    except Exception as e:  # noqa: BLE001 - anything wrong with one episode quarantines it
                        error = _reason(e)
                if error is not None:
                    writer.quarantine(ep.ref, error, params(ep.ref))
                    report.quarantined.append((ep.ref.key, error))
                bar.advance(1)
                if time.monotonic() - last_commit > commit_every_s:
                    report.version_after = writer.commit(f"ingest (partial): {report.added} episodes") \
                        or report.version_after
                    last_commit = time.monotonic()

            def flush(ep: _Episode) -> None:
                while ep.blocks and ep.blocks[0] in ep.done:
                    ref = ep.blocks.popleft()
                    if ep.error is not None:
                        continue
                    try:
                        feats, stamps = ray.get(ref)
                        writer.append_frames(ep.ref, feats, stamps)
                        report.frames += len(feats)
                        bar.add_frames(len(feats))
                    except Exception as e:  # noqa: BLE001
                        ep.error = _reason(e)
                if ep.decoded_all and not ep.blocks:
                    finish(ep)

            while queue or gens or inflight:
                while queue and len(gens) < max_decoders:
                    ref = queue.popleft()
                    p = params(ref)
                    writer.start_episode(ref, p)
                    gen = _decode_task.options(num_returns="streaming", _generator_backpressure_num_objects=2) \
                        .remote(ref, fps=p["fps"], size=p["size"], resize=p["resize"],
                                max_seconds=p["max_seconds"], block_frames=encoder.batch_size,
                                decoder=sampling.decoder)
                    gens[gen] = _Episode(ref, p["fps"], _actions_task.remote(ref))
                waitables = list(inflight) + (list(gens) if len(inflight) < max_inflight else [])
                ready, _ = ray.wait(waitables, num_returns=1)
                for r in ready:
                    if r in gens:
                        ep = gens[r]
                        try:
                            block = next(r)
                        except StopIteration:
                            del gens[r]
                            ep.decoded_all = True
                            flush(ep)
                            continue
                        enc = actors[len(inflight) % len(actors)].encode.remote(block)
                        inflight[enc] = ep
                        ep.blocks.append(enc)
                    else:
                        ep = inflight.pop(r)
                        ep.done.add(r)
                        flush(ep)
        report.version_after = writer.commit(
            f"ingest: +{report.added} episodes, {len(report.quarantined)} quarantined",
            {"added": report.added, "quarantined": len(report.quarantined)},
        ) or report.version_after
        added_keys = {r.key for r in plan.todo}
        idx = writer.index
        keys = [f"{s}/{e}" for s, e in zip(idx["source"].to_pylist(), idx["episode_id"].to_pylist(), strict=True)]
        report.hours = sum(d for k, d in zip(keys, idx["duration_s"].to_pylist(), strict=True)
                           if k in added_keys) / 3600
    report.seconds = time.monotonic() - t0
    return report


def source_fps(sampling: SamplingConfig, specs: Iterable[SourceSpec]) -> Callable[[EpisodeRef], float]:
    by_id = {s.id: (s.fps or sampling.fps) for s in specs}
    return lambda ref: by_id.get(ref.source, sampling.fps)


def ingest_corpus(cfg: CorpusConfig, *, sources: list[str] | None = None, store_uri: str | None = None,
                  progress: bool = True, **kw) -> IngestReport:
    """Ingest every source of a corpus config (or the named ones) into its store."""
    specs = [s for s in cfg.sources if not sources or s.id in sources]
    missing = set(sources or []) - {s.id for s in specs}
    if missing:
        have = [s.id for s in cfg.sources]
        raise ConfigError(f"no source {sorted(missing)!r} in corpus {cfg.name!r}; it has {have!r}")
    refs = [ref for spec in specs for ref in iter_episodes(spec)]
    store = cfg.store if store_uri is None else cfg.store.model_copy(update={"uri": store_uri})
    return ingest_episodes(refs, encoder=cfg.encoder, sampling=cfg.sampling, store=store,
                           fps_for=source_fps(cfg.sampling, specs), progress=progress, **kw)
