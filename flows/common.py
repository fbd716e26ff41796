"""What every lawam flow shares: the retry policy, the per-store refresh lock, artifacts.

Retries: only an infrastructure fault (`pipeline.errors.is_retryable`: a lost Ray worker,
an object store or network error) is retried. Bad input, a bad config, a full disk or a bug
fail the run at once: a retry cannot fix them. Re-running is cheap: every stage skips what
a failed attempt committed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pipeline.errors import is_retryable
from schemas import CorpusConfig, load_corpus

RETRIES = 2
RETRY_DELAY_S = 30


def retry_on_infrastructure(task, task_run, state) -> bool:  # noqa: ARG001 - Prefect's retry_condition_fn
    """Prefect `retry_condition_fn`: retry the task only when it failed on an infrastructure fault."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_retryable(error)


def refresh_limit_name(store_uri: str) -> str:
    """The global concurrency limit that lets one refresh at a time write to `store_uri`.
    Prefect limit names cannot hold '/', '%', '&', '<' or '>': the URI's tail is kept
    readable and a hash of the whole URI keeps two stores apart."""
    tail = re.sub(r"[/%&<>]+", "_", store_uri.rstrip("/"))[-60:].strip("_")
    return f"refresh:{tail}-{hashlib.sha256(store_uri.encode()).hexdigest()[:10]}"


def ensure_refresh_limit(store_uri: str) -> str:
    """Create the store's refresh limit (1 slot) unless it exists; its name. Two refreshes
    creating it at the same moment are fine: the loser finds it made."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = refresh_limit_name(store_uri)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


@contextmanager
def one_refresh_per_store(store_uri: str, log=None) -> Iterator[None]:
    """Hold the store's refresh slot (a Prefect global concurrency limit of 1, created on
    first use) for the block: a second refresh of the same store waits for the first."""
    from prefect.concurrency.sync import concurrency

    name = ensure_refresh_limit(store_uri)
    if log is not None:
        log.info("waiting for the refresh slot %r (one refresh per store at a time)", name)
    with concurrency(name, occupy=1, strict=True):
        if log is not None:
            log.info("holding the refresh slot %r", name)
        yield


def as_corpus(cfg: CorpusConfig | str | Path | dict) -> CorpusConfig:
    """A corpus config from itself, a YAML file (as a deployment passes it: re-read every run)
    or a mapping."""
    if isinstance(cfg, CorpusConfig):
        return cfg
    if isinstance(cfg, dict):
        return CorpusConfig.model_validate(cfg)
    return load_corpus(cfg)


def publish(key: str, markdown: str, rows: list[dict[str, Any]], description: str) -> None:
    """One markdown artifact (the report) and one table artifact (its figures) under `key`."""
    create_markdown_artifact(markdown=markdown, key=key, description=description)
    if rows:
        create_table_artifact(table=[{k: _cell(v) for k, v in r.items()} for r in rows], key=f"{key}-table",
                              description=description)


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 4)
    return v if v is None or isinstance(v, int | str | bool) else str(v)


def stage_row(stage: str, *, items: int | None = None, unit: str = "", hours: float | None = None,
              seconds: float | None = None, version_before: str | None = None, version_after: str | None = None,
              **extra: Any) -> dict[str, Any]:
    """One row of a per-stage table: counts, hours, throughput, store versions before → after."""
    per_s = items / seconds if items is not None and seconds else None
    return {"stage": stage, "items": items, "unit": unit, "hours": hours, "seconds": seconds,
            "throughput": f"{per_s:.3g} {unit}/s" if per_s is not None else None,
            "version_before": version_before,
            "version_after": version_after or ("(unchanged)" if version_before else None), **extra}
