"""Prefect flow `ingest_source`: config in, `pipeline.ingest` does the work, artifacts out.

Runs against the configured Prefect server; without one Prefect starts a temporary server
(~15 s), which is why a one-off `lawam ingest` calls `pipeline.ingest` directly unless a
server is configured or `--flow` is given. Schedules come with `lawam serve`. The ingest
runs as a task that retries on infrastructure faults only (`flows.common`); a re-run skips
every episode the failed attempt committed.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from flows.common import RETRIES, RETRY_DELAY_S, publish, retry_on_infrastructure, stage_row
from pipeline.ingest import IngestReport, ingest_corpus
from schemas import CorpusConfig


@task(name="ingest", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, retry_condition_fn=retry_on_infrastructure)
def ingest_task(cfg: CorpusConfig, sources: list[str] | None, store_uri: str | None, progress: bool,
                retry_quarantined: bool = False) -> IngestReport:
    return ingest_corpus(cfg, sources=sources, store_uri=store_uri, progress=progress,
                         retry_quarantined=retry_quarantined)


def ingest_row(report: IngestReport) -> dict:
    return stage_row("ingest", items=report.frames, unit="frames", hours=report.hours, seconds=report.seconds,
                     version_before=report.version_before or "(new)", version_after=report.version_after,
                     added=report.added, skipped=report.skipped, quarantined=len(report.quarantined))


@flow(name="ingest_source", log_prints=False, validate_parameters=False)
def ingest_source(cfg: CorpusConfig, sources: list[str] | None = None, store_uri: str | None = None,
                  progress: bool = True, retry_quarantined: bool = False) -> IngestReport:
    """Ingest the corpus's sources (or the named ones) into its feature store and publish a
    markdown artifact: episodes added / skipped / quarantined, frames/s, version before → after."""
    report = ingest_task(cfg, sources, store_uri, progress, retry_quarantined)
    publish("ingest-report", report.to_markdown(), [ingest_row(report)], f"ingest into {report.store}")
    get_run_logger().info("ingest: +%d episodes, %d skipped, %d quarantined, %.1f frames/s",
                          report.added, report.skipped, len(report.quarantined), report.frames_per_s)
    return report
