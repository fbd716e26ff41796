"""Schedules: the corpus's deployments on a Prefect server, run by this process.

    PREFECT_API_URL=http://127.0.0.1:4200/api lawam serve configs/corpus.yaml --cron "0 3 * * *"

Registers `refresh-<corpus>` (`refresh_corpus`, on the cron schedule) and `chain-<corpus>`
(`lawam_chain`, no schedule: trigger it with `prefect deployment run`), then serves them
(`prefect.serve`): each run executes in a subprocess of this one. The deployments take the
corpus *file*, so an edit to it is picked up by the next run. One refresh per store runs at
a time (a Prefect global concurrency limit keyed by the store): a second trigger waits.
"""

from __future__ import annotations

from pathlib import Path

from prefect.deployments.runner import EntrypointType, RunnerDeployment

from pipeline.errors import one_line
from schemas import ConfigError, load_corpus
from schemas.errors import InfrastructureError


class ServerError(InfrastructureError, ConnectionError):
    """No Prefect server to register schedules with (exit 1: once one runs, the same command works)."""

    advice = ""  # the message says how to start one; "a re-run skips what was committed" means nothing here


def check_server(timeout_s: float = 5.0) -> str:
    """The configured Prefect API URL, once its /health answers; else ServerError in one line."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    hint = "run `prefect server start` (it binds 127.0.0.1:4200) and set PREFECT_API_URL=http://127.0.0.1:4200/api"
    if not url:
        raise ServerError(f"no Prefect server configured (PREFECT_API_URL is not set): schedules need one; {hint}")
    try:
        r = httpx.get(url.rstrip("/") + "/health", timeout=timeout_s)
        r.raise_for_status()
    except httpx.HTTPError as e:
        raise ServerError(f"the Prefect server at {url} is not reachable ("
                          f"{one_line(e)}); {hint}, or point "
                          "PREFECT_API_URL at a running one") from None
    return url


def corpus_deployments(corpus: str | Path, *, cron: str = "0 3 * * *",
                       runs_dir: str | Path | None = None) -> list[RunnerDeployment]:
    """The deployments of one corpus file: `refresh-<name>` on `cron`, `chain-<name>` on demand
    (its runs in `runs_dir`, default `runs/` beside the store)."""
    from flows.chain import lawam_chain
    from flows.refresh import refresh_corpus

    path = Path(corpus).resolve()
    cfg = load_corpus(path)  # a bad file fails here, before anything is registered
    try:
        from prefect.client.schemas.schedules import CronSchedule

        CronSchedule(cron=cron)
    except ValueError as e:
        raise ConfigError(f"--cron {cron!r}: not a cron expression ({one_line(e)})") from None
    runs = str(Path(runs_dir).resolve()) if runs_dir else str(Path(cfg.store.uri).parent / "runs")
    tags = ["lawam", f"corpus:{cfg.name}"]
    return [
        refresh_corpus.to_deployment(name=f"refresh-{cfg.name}", cron=cron, parameters={"cfg": str(path)}, tags=tags,
                                     description=f"ingest every source of {path} (then curate, with curation:, "
                                                 "and label, with labels.lam)",
                                     entrypoint_type=EntrypointType.MODULE_PATH),
        lawam_chain.to_deployment(name=f"chain-{cfg.name}", parameters={"cfg": str(path), "runs_dir": runs},
                                  tags=tags, description=f"refresh → train_lam → label → distill → evaluate: {path}",
                                  entrypoint_type=EntrypointType.MODULE_PATH),
    ]


def serve_corpus(corpus: str | Path, *, cron: str = "0 3 * * *", runs_dir: str | Path | None = None,
                 limit: int | None = None) -> None:
    """Check the server, register the corpus's deployments and run them until interrupted."""
    from prefect import serve

    from flows.common import ensure_refresh_limit

    check_server()
    deployments = corpus_deployments(corpus, cron=cron, runs_dir=runs_dir)
    ensure_refresh_limit(load_corpus(corpus).store.uri)  # before any run, so none races to make it
    serve(*deployments, limit=limit, print_starting_message=True)
