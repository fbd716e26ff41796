"""Prefect flow `refresh_corpus`: the scheduled job of a corpus (`lawam serve`).

Every source of the corpus is ingested (unchanged episodes are skipped before anything is
decoded); when the corpus names a curation config (`curation: curate.yaml`), the episodes
its curation set lacks are curated (`pipeline.curation.curate_store`); then, when the corpus
names its current LaWM (`labels: {lam: runs/lam}`), the episodes that lack current labels of
that LaWM (new, or redone since) are labelled. One
refresh per store runs at a time (`flows.common.one_refresh_per_store`); a second one waits
for the slot, and the store's own writer lock backs that up.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow, get_run_logger, task

from flows.common import (
    RETRIES,
    RETRY_DELAY_S,
    as_corpus,
    one_refresh_per_store,
    publish,
    retry_on_infrastructure,
    stage_row,
)
from flows.ingest import ingest_row, ingest_task
from flows.stages import _label_task, label_row
from pipeline.curation import CurationReport
from pipeline.ingest import IngestReport
from pipeline.label import LabelReport
from schemas import CorpusConfig
from schemas.curation import CurationConfig


@dataclass
class RefreshReport:
    ingest: IngestReport
    labels: LabelReport | None  # None when the corpus names no LaWM (or labels were not asked for)
    curation: CurationReport | None = None  # None when the corpus names no curation config
    curation_hours: str = ""  # markdown: hours kept / dropped per source, examples

    def to_markdown(self) -> str:
        md = self.ingest.to_markdown()
        if self.curation is not None:
            md += "\n" + self.curation.to_markdown() + "\n" + self.curation_hours
        return md + ("\n" + self.labels.to_markdown() if self.labels is not None else
                     "\n_No labels: the corpus names no LaWM (`labels: {lam: ...}`)._\n")


@task(name="curate", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, retry_condition_fn=retry_on_infrastructure)
def curate_task(store_uri: str, cfg: CurationConfig, progress: bool) -> tuple[CurationReport, str]:
    """Curate the store, and its hours kept and dropped per source as markdown."""
    from pipeline.catalog import summarize
    from pipeline.curation import curate_store
    from pipeline.curation.decisions import hours_markdown

    report = curate_store(store_uri, cfg, progress=progress)
    mine = [c for c in summarize(store_uri).curation_sets if c["id"] == report.set_id]
    return report, hours_markdown(mine[0]) if mine else ""


def curate_row(report: CurationReport) -> dict:
    return stage_row("curate", items=report.frames, unit="frames", seconds=report.seconds,
                     version_before=report.version_before, version_after=report.version_after,
                     episodes=report.episodes, skipped=report.skipped, curation_set=report.set_id,
                     duplicates=report.duplicates, still_spans=report.spans)


@flow(name="refresh_corpus", validate_parameters=False)
def refresh_corpus(cfg: CorpusConfig | str, *, retry_quarantined: bool = False, label: bool = True,
                   progress: bool = False) -> RefreshReport:
    """Ingest every source of `cfg` into its store, curate with `cfg.curation` when set, then
    label new or redone episodes with `cfg.labels.lam` when set (and `label`).
    `retry_quarantined` retries quarantined episodes whose input did not change. Publishes the
    reports as markdown and a per-stage table."""
    log = get_run_logger()
    cfg = as_corpus(cfg)
    curation = hours = None
    with one_refresh_per_store(cfg.store.uri, log):
        ingest = ingest_task(cfg, None, None, progress, retry_quarantined)
        if cfg.curation is not None:
            curation, hours = curate_task(cfg.store.uri, cfg.curation, progress)
        labels = None
        if label and cfg.labels is not None:
            labels = _label_task(cfg.store.uri, cfg.labels.lam, None, None, progress)
    report = RefreshReport(ingest, labels, curation, hours or "")
    rows = [ingest_row(ingest)] + ([curate_row(curation)] if curation is not None else [])
    rows += [label_row(labels)] if labels is not None else []
    publish("refresh-report", report.to_markdown(), rows, f"refresh of {cfg.name} into {cfg.store.uri}")
    log.info("refresh %s: +%d episodes, %d quarantined%s", cfg.name, ingest.added, len(ingest.quarantined),
             f"; labelled {labels.episodes}" if labels is not None else "")
    return report
