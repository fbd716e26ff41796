"""Ingest: episode refs → decode → frozen encoder → a new version of the feature store.

    from pipeline.ingest import ingest_corpus
    report = ingest_corpus(load_corpus("configs/corpus.yaml"))   # in a notebook, no Prefect

`plan` first: the refs are diffed against the store's committed index and unchanged
episodes are skipped before anything is decoded — a re-run with nothing new starts
neither Ray nor the model, nor even imports them (Ray, torch and timm load only when there
is something to encode). Unchanged files are not even read: `ingest_corpus` seeds the
content-hash memo from the store's `files` table before it enumerates (see
`pipeline.sources.hashing`). A quarantined episode is retried only when its input changed,
or with `retry_quarantined=True`; the catalog counts its `failures` since `failed_since`.
The rest runs on Ray (`pipeline.ingest.ray_executor`): local by default, the cluster named by
`RAY_ADDRESS` otherwise. One commit at the end (and every
`commit_every_s` seconds on long runs) publishes the new episodes; failed episodes are
quarantined in the catalog with a one-line reason and listed in the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from pipeline.ingest.assembler import EpisodeAssembler
from pipeline.progress import progress_bar
from pipeline.sources import hashing, iter_episodes
from pipeline.store import StoreWriter
from pipeline.store.files import committed_files
from pipeline.store.index import committed_attrs
from schemas import ConfigError, CorpusConfig, EncoderConfig, SamplingConfig, SourceSpec, StoreConfig
from schemas.identity import EncoderIdentity, SamplingParams
from schemas.records import EpisodeRef

__all__ = ["IngestReport", "ensure_ray", "ingest_corpus", "ingest_episodes", "remember_hashes"]

log = logging.getLogger(__name__)


def ensure_ray(verbose: bool | None = None) -> None:
    """Start (or connect to) Ray: see `pipeline.ray_runtime.ensure_ray`. Imported on call, so
    importing this module does not load Ray."""
    from pipeline.ray_runtime import ensure_ray as _ensure_ray

    _ensure_ray(verbose)


def _stored_encoder(store: StoreConfig) -> EncoderIdentity | None:
    """The encoder identity the store's branch was built with; None for a new store."""
    stored = committed_attrs(store.uri, store.branch).get("encoder")
    return EncoderIdentity.from_dict(stored, where=f"store {store.uri!r}") if stored else None


def _encoder_identity(encoder: EncoderConfig, stored: EncoderIdentity | None,
                      uri: str) -> tuple[EncoderConfig, EncoderIdentity, bool]:
    """(the config with its runtime and precision resolved against the store, the identity to
    open the store with, whether it is the full one). `runtime: auto` follows the store's own
    numerics, so a store keeps growing with what it was written with. When the store already
    names this encoder's settings, its identity is used as is and timm (torch) is not
    imported; `encoder_identity` is then checked against it before any frame is encoded."""
    from pipeline.encode.identity import config_weights, resolve_numerics

    encoder = resolve_numerics(encoder, stored=stored)
    if stored and stored.same_settings(model=encoder.model, weights=config_weights(encoder),
                                       image_size=encoder.image_size, tokens=encoder.tokens, layer=encoder.layer,
                                       runtime=encoder.runtime, precision=encoder.precision):
        return encoder, stored, False
    from pipeline.encode import encoder_identity

    identity = encoder_identity(encoder)
    if stored:
        stored.require_same(identity, ours=f"store {uri!r}", theirs="this run", fix=_mismatch_fix(stored, identity))
    return encoder, identity, True


def _mismatch_fix(stored: EncoderIdentity, ours: EncoderIdentity) -> str:
    """What to do when this run's encoder is not the store's: the YAML lines that name the
    store's numerics when only those differ."""
    if set(stored.differences(ours)) <= {"runtime", "precision"}:
        return (f"set `encoder: {{runtime: {stored.runtime}, precision: {stored.precision}}}` (or `auto`, which "
                "follows the store) in the corpus YAML, or choose another --store for the new numerics")
    return "choose another --store"


def remember_hashes(store: StoreConfig) -> int:
    """Seed the content-hash memo from the store's committed `files` table, so enumerating the
    sources afterwards reads only files whose stat identity changed. Returns the entries trusted."""
    n = hashing.seed(committed_files(store.uri, store.branch).to_pylist())
    log.info("%d file hashes remembered from %s", n, store.uri)
    return n


@dataclass
class IngestReport:
    store: str
    version_before: str | None
    version_after: str | None  # None when nothing was committed
    added: int = 0
    skipped: int = 0
    retitled: int = 0  # skipped episodes whose instruction text was updated
    held: int = 0  # quarantined before with this same input: not retried (retry_quarantined=True does)
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (episode key, reason)
    frames: int = 0
    hours: float = 0.0  # of video added, at the kept frame rate
    seconds: float = 0.0
    steady_frames_per_s: float | None = None  # once the model is loaded and the first block is through
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)  # Ray node -> episodes decoded, frames encoded

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def to_markdown(self) -> str:
        rows = [
            ("episodes added", self.added), ("episodes skipped (unchanged)", self.skipped),
            ("instructions updated", self.retitled), ("still quarantined (input unchanged, not retried)", self.held),
            ("episodes quarantined", len(self.quarantined)), ("frames encoded", self.frames),
            ("hours added", f"{self.hours:.3f}"), ("throughput", f"{self.frames_per_s:.1f} frames/s"),
            ("store version", f"{self.version_before or '(new)'} → {self.version_after or '(unchanged)'}"),
        ]
        md = f"## Ingest into `{self.store}`\n\n| | |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)
        if self.quarantined:
            md += "\n### Quarantined\n\n| episode | reason |\n|---|---|\n"
            md += "".join(f"| {k} | {r.replace('|', '/')} |\n" for k, r in self.quarantined)
        if len(self.nodes) > 1:
            md += "\n### Ray nodes\n\n| node | episodes decoded | frames encoded |\n|---|---|---|\n"
            md += "".join(f"| {n} | {c['episodes decoded']} | {c['frames encoded']} |\n"
                          for n, c in sorted(self.nodes.items()))
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
    retry_quarantined: bool = False,
    source_roots: Iterable[str] = (),
    executor: Literal["ray", "local"] = "ray",
) -> IngestReport:
    """Ingest `refs` into `store` and return what was done. Quarantined episodes do not
    raise; bad config, a store of another encoder, or an infrastructure fault do. An episode
    quarantined before is retried only when its input changed, or with `retry_quarantined`.
    The digests of the files the refs were hashed from are committed with the episodes;
    remembered digests of files under `source_roots` (folders whose every episode is in
    `refs`) that this process did not see are dropped.

    `executor="ray"` decodes and encodes on Ray (local, or the cluster of `RAY_ADDRESS`);
    `"local"` in this process, without starting Ray (a notebook, a handful of episodes): the
    same step, the same features."""
    if executor not in ("ray", "local"):
        raise ConfigError(f"executor {executor!r}: use 'ray' or 'local'")
    t0 = time.monotonic()
    refs = list(refs)
    fps_for = fps_for or (lambda ref: sampling.fps)

    def params(ref: EpisodeRef) -> SamplingParams:
        return SamplingParams(fps=fps_for(ref), size=encoder.image_size, resize=sampling.resize,
                              max_seconds=sampling.max_seconds)

    encoder, identity, full = _encoder_identity(encoder, _stored_encoder(store), store.uri)
    with StoreWriter.open(store.uri, encoder=identity, chunk_frames=store.chunk_frames,
                          branch=store.branch) as writer:
        report = IngestReport(store.uri, writer.parent_version, None)
        plan = writer.plan(refs, params, retry_quarantined=retry_quarantined)
        report.skipped, report.retitled, report.held = len(plan.skipped), len(plan.retitled), len(plan.held)
        seen = hashing.observed()
        remembered = writer.remember_files(seen)
        forgotten = writer.forget_files(source_roots, (rec.uri for rec in seen))
        if not full and any(ref.refused is None for ref in plan.todo):
            from pipeline.encode import encoder_identity

            built = encoder_identity(encoder)
            identity.require_same(built, ours=f"store {store.uri!r}", theirs="this run",
                                  fix=_mismatch_fix(identity, built))
        # Refused at enumeration (a path outside the source, a missing file, a demo without
        # actions): quarantined as they are, their media never opened.
        todo = [ref for ref in plan.todo if ref.refused is None]
        for ref in plan.todo:
            if ref.refused is not None:
                writer.quarantine(ref, ref.refused, params(ref))
                report.quarantined.append((ref.key, ref.refused))
        log.info("%d episodes to ingest, %d unchanged, %d still quarantined, %d refused; %d files read "
                 "for hashing (%d new file hashes, %d files gone)", len(todo), len(plan.skipped), len(plan.held),
                 len(plan.todo) - len(todo), hashing.hash_stats()["files"], remembered, forgotten)
        if not todo:  # nothing to encode: no Ray, no model; a commit only if the catalog changed
            report.version_after = writer.commit(f"ingest: {len(plan.retitled)} instructions updated, "
                                                 f"{len(report.quarantined)} quarantined, "
                                                 f"{remembered} file hashes remembered")
        else:
            with progress_bar("ingest", total=len(todo), enabled=progress, unit="episodes") as bar:
                step = EpisodeAssembler(writer, params, bar, commit_every_s)
                step.stats.quarantined.extend(report.quarantined)
                stats = _executor(executor, encoder, sampling, num_encoders).run(step, todo)  # commits at the end
            report.version_after = stats.last_version
            report.added, report.frames, report.quarantined = stats.added, stats.frames, stats.quarantined
            report.hours = stats.seconds_of_video / 3600
            report.steady_frames_per_s = stats.steady_frames_per_s
            report.nodes = stats.nodes
    report.seconds = time.monotonic() - t0
    return report


def _executor(kind: str, encoder: EncoderConfig, sampling: SamplingConfig, num_encoders: int | None):
    if kind == "local":
        from pipeline.ingest.local_executor import LocalExecutor

        return LocalExecutor(encoder, block_frames=encoder.batch_size, decoder=sampling.decoder)
    from pipeline.ingest.ray_executor import RayExecutor, encoder_pool

    ensure_ray()
    actors = encoder_pool(encoder, num_encoders)  # models load on the workers while decoding starts
    return RayExecutor(actors, block_frames=encoder.batch_size, decoder=sampling.decoder)


def source_fps(sampling: SamplingConfig, specs: Iterable[SourceSpec]) -> Callable[[EpisodeRef], float]:
    """Per-source sampling rate: a source's own `fps`, else the corpus's."""
    by_id = {s.id: (s.fps or sampling.fps) for s in specs}
    return lambda ref: by_id.get(ref.source, sampling.fps)


def ingest_corpus(cfg: CorpusConfig, *, sources: list[str] | None = None, store_uri: str | None = None,
                  progress: bool = True, retry_quarantined: bool = False, **kw) -> IngestReport:
    """Ingest every source of a corpus config (or the named ones) into its store. Files whose
    stat identity matches the store's `files` table are not re-hashed; quarantined episodes
    are retried only when their input changed, or with `retry_quarantined`."""
    specs = [s for s in cfg.sources if not sources or s.id in sources]
    missing = set(sources or []) - {s.id for s in specs}
    if missing:
        have = [s.id for s in cfg.sources]
        raise ConfigError(f"no source {sorted(missing)!r} in corpus {cfg.name!r}; it has {have!r}")
    store = cfg.store if store_uri is None else cfg.store.model_copy(update={"uri": store_uri})
    remember_hashes(store)  # before enumerating: unchanged files are then not read again
    refs = [ref for spec in specs for ref in iter_episodes(spec)]
    return ingest_episodes(refs, encoder=cfg.encoder, sampling=cfg.sampling, store=store,
                           fps_for=source_fps(cfg.sampling, specs), progress=progress,
                           retry_quarantined=retry_quarantined, source_roots=source_roots(specs), **kw)


def source_roots(specs: Iterable[SourceSpec]) -> list[str]:
    """The folders whose files the sources enumerate whole, spelled as the `files` table spells
    file URIs (local: absolute paths; object stores: the URL). A list of shards or a brace
    pattern names files, not a folder: its folder may hold other sources' files, so none."""
    return [hashing.record_uri(spec.uri).rstrip("/") for spec in specs
            if isinstance(spec.uri, str) and not ("{" in spec.uri and "}" in spec.uri)]
