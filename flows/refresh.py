"""Prefect flow `refresh_corpus`: the scheduled job of a corpus (`lawam serve`).

Every source of the corpus is ingested (unchanged episodes are skipped before anything is
decoded), then, when the corpus names its current LaWM (`labels: {lam: runs/lam}`), the
episodes that lack current labels of that LaWM (new, or redone since) are labelled. One
refresh per store runs at a time (`flows.common.one_refresh_per_store`); a second one waits
for the slot, and the store's own writer lock backs that up.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow, get_run_logger

from flows.common import as_corpus, one_refresh_per_store, publish
from flows.ingest import ingest_row, ingest_task
from flows.stages import _label_task, label_row
from pipeline.ingest import IngestReport
from pipeline.label import LabelReport
from schemas import CorpusConfig


@dataclass
class RefreshReport:
    ingest: IngestReport
    labels: LabelReport | None  # None when the corpus names no LaWM (or labels were not asked for)

    def to_markdown(self) -> str:
        md = self.ingest.to_markdown()
        return md + ("\n" + self.labels.to_markdown() if self.labels is not None else
                     "\n_No labels: the corpus names no LaWM (`labels: {lam: ...}`)._\n")


@flow(name="refresh_corpus", validate_parameters=False)
def refresh_corpus(cfg: CorpusConfig | str, *, retry_quarantined: bool = False, label: bool = True,
                   progress: bool = False) -> RefreshReport:
    """Ingest every source of `cfg` into its store, then label new or redone episodes with
    `cfg.labels.lam` when set (and `label`). `retry_quarantined` retries quarantined episodes
    whose input did not change. Publishes the reports as markdown and a per-stage table."""
    log = get_run_logger()
    cfg = as_corpus(cfg)
    with one_refresh_per_store(cfg.store.uri, log):
        ingest = ingest_task(cfg, None, None, progress, retry_quarantined)
        labels = None
        if label and cfg.labels is not None:
            labels = _label_task(cfg.store.uri, cfg.labels.lam, None, None, progress)
    report = RefreshReport(ingest, labels)
    rows = [ingest_row(ingest)] + ([label_row(labels)] if labels is not None else [])
    publish("refresh-report", report.to_markdown(), rows, f"refresh of {cfg.name} into {cfg.store.uri}")
    log.info("refresh %s: +%d episodes, %d quarantined%s", cfg.name, ingest.added, len(ingest.quarantined),
             f"; labelled {labels.episodes}" if labels is not None else "")
    return report
