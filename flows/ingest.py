"""Prefect flow `ingest_source`: config in, `pipeline.ingest` does the work, artifact out.

One-off runs need no server (Prefect's ephemeral mode); schedules come with `lawam serve`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from pipeline.ingest import IngestReport, ingest_corpus
from schemas import CorpusConfig


@flow(name="ingest_source", log_prints=False, validate_parameters=False)
def ingest_source(cfg: CorpusConfig, sources: list[str] | None = None, store_uri: str | None = None,
                  progress: bool = True) -> IngestReport:
    """Ingest the corpus's sources (or the named ones) into its feature store and publish a
    markdown artifact: episodes added / skipped / quarantined, frames/s, version before → after."""
    report = ingest_corpus(cfg, sources=sources, store_uri=store_uri, progress=progress)
    create_markdown_artifact(markdown=report.to_markdown(), key="ingest-report",
                             description=f"ingest into {report.store}")
    get_run_logger().info("ingest: +%d episodes, %d skipped, %d quarantined, %.1f frames/s",
                          report.added, report.skipped, len(report.quarantined), report.frames_per_s)
    return report
