"""Ingest: episode refs → decode → frozen encoder → a new version of the feature store.

    from pipeline.ingest import ingest_corpus
    report = ingest_corpus(load_corpus("configs/corpus.yaml"))   # in a notebook, no Prefect

`plan` first: the refs are diffed against the store's committed index and unchanged
episodes are skipped before anything is decoded — a re-run with nothing new starts
neither Ray nor the model. The rest runs on Ray (`pipeline.ray_job`): local by default,
the cluster named by `RAY_ADDRESS` otherwise. One commit at the end (and every
`commit_every_s` seconds on long runs) publishes the new episodes; failed episodes are
quarantined in the catalog with a one-line reason and listed in the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pipeline.encode import encoder_identity
from pipeline.progress import progress_bar
from pipeline.ray_job import IngestRun, encoder_pool, ensure_ray
from pipeline.sources import iter_episodes
from pipeline.store import StoreWriter
from schemas import ConfigError, CorpusConfig, EncoderConfig, SamplingConfig, SourceSpec, StoreConfig
from schemas.records import EpisodeRef

__all__ = ["IngestReport", "ensure_ray", "ingest_corpus", "ingest_episodes"]

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    store: str
    version_before: str | None
    version_after: str | None  # None when nothing was committed
    added: int = 0
    skipped: int = 0
    retitled: int = 0  # skipped episodes whose instruction text was updated
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (episode key, reason)
    frames: int = 0
    hours: float = 0.0  # of video added, at the kept frame rate
    seconds: float = 0.0
    steady_frames_per_s: float | None = None  # once the model is loaded and the first block is through

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def to_markdown(self) -> str:
        rows = [
            ("episodes added", self.added), ("episodes skipped (unchanged)", self.skipped),
            ("instructions updated", self.retitled),
            ("episodes quarantined", len(self.quarantined)), ("frames encoded", self.frames),
            ("hours added", f"{self.hours:.3f}"), ("throughput", f"{self.frames_per_s:.1f} frames/s"),
            ("store version", f"{self.version_before or '(new)'} → {self.version_after or '(unchanged)'}"),
        ]
        md = f"## Ingest into `{self.store}`\n\n| | |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)
        if self.quarantined:
            md += "\n### Quarantined\n\n| episode | reason |\n|---|---|\n"
            md += "".join(f"| {k} | {r.replace('|', '/')} |\n" for k, r in self.quarantined)
        return md


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
    """Ingest `refs` into `store` and return what was done. Quarantined episodes do not
    raise; bad config, a store of another encoder, or an infrastructure fault do."""
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
        report.skipped, report.retitled = len(plan.skipped), len(plan.retitled)
        # Refused at enumeration (a path outside the source, a missing file, a demo without
        # actions): quarantined as they are, their media never opened.
        todo = [ref for ref in plan.todo if ref.refused is None]
        for ref in plan.todo:
            if ref.refused is not None:
                writer.quarantine(ref, ref.refused, params(ref))
                report.quarantined.append((ref.key, ref.refused))
        log.info("%d episodes to ingest, %d unchanged, %d refused", len(todo), len(plan.skipped),
                 len(plan.todo) - len(todo))
        if not todo:  # nothing to encode: no Ray, no model; a commit only if the catalog changed
            report.version_after = writer.commit(f"ingest: {len(plan.retitled)} instructions updated, "
                                                 f"{len(report.quarantined)} quarantined")
        else:
            ensure_ray()
            actors = encoder_pool(encoder, num_encoders)  # models load on the workers while decoding starts
            with progress_bar("ingest", total=len(todo), enabled=progress, unit="episodes") as bar:
                run = IngestRun(writer, actors, params, block_frames=encoder.batch_size, decoder=sampling.decoder,
                                bar=bar, commit_every_s=commit_every_s)
                run.stats.quarantined.extend(report.quarantined)
                stats = run.run(todo)
                run.commit(f"ingest: +{stats.added} episodes, {len(stats.quarantined)} quarantined")
            report.version_after = stats.last_version
            report.added, report.frames, report.quarantined = stats.added, stats.frames, stats.quarantined
            report.hours = stats.seconds_of_video / 3600
            report.steady_frames_per_s = stats.steady_frames_per_s
    report.seconds = time.monotonic() - t0
    return report


def source_fps(sampling: SamplingConfig, specs: Iterable[SourceSpec]) -> Callable[[EpisodeRef], float]:
    """Per-source sampling rate: a source's own `fps`, else the corpus's."""
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
