"""Prefect flow `ingest_source`: config in, `pipeline.ingest` does the work, artifact out.

Runs against the configured Prefect server; without one Prefect starts a temporary server
(~15 s), which is why `lawam ingest` calls `pipeline.ingest` directly unless a server is
configured or `--flow` is given. Schedules come with `lawam serve`.
The ingest runs as a task that retries on infrastructure faults (a lost Ray worker, an
object store hiccup) and never on bad input: our domain errors are ValueErrors, and a
retry cannot fix a bad config or a store made by another encoder. Retrying is cheap: the
re-run skips every episode the failed attempt committed.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from pipeline.ingest import IngestReport, ingest_corpus
from schemas import CorpusConfig


def is_transient(task, task_run, state) -> bool:  # noqa: ARG001 - Prefect's retry_condition_fn signature
    """Retry unless the failure is bad input (a ValueError: ConfigError, SourceError, ...)."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, ValueError)


@task(name="ingest", retries=2, retry_delay_seconds=30, retry_condition_fn=is_transient)
def ingest_task(cfg: CorpusConfig, sources: list[str] | None, store_uri: str | None, progress: bool,
                retry_quarantined: bool = False) -> IngestReport:
    return ingest_corpus(cfg, sources=sources, store_uri=store_uri, progress=progress,
                         retry_quarantined=retry_quarantined)


@flow(name="ingest_source", log_prints=False, validate_parameters=False)
def ingest_source(cfg: CorpusConfig, sources: list[str] | None = None, store_uri: str | None = None,
                  progress: bool = True, retry_quarantined: bool = False) -> IngestReport:
    """Ingest the corpus's sources (or the named ones) into its feature store and publish a
    markdown artifact: episodes added / skipped / quarantined, frames/s, version before → after."""
    report = ingest_task(cfg, sources, store_uri, progress, retry_quarantined)
    create_markdown_artifact(markdown=report.to_markdown(), key="ingest-report",
                             description=f"ingest into {report.store}")
    get_run_logger().info("ingest: +%d episodes, %d skipped, %d quarantined, %.1f frames/s",
                          report.added, report.skipped, len(report.quarantined), report.frames_per_s)
    return report
