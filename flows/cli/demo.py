"""The chain whole: `demo` (once, on the samples) and `serve` (on a schedule, on a corpus)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer
from rich.table import Table

from flows.cli.app import VERBOSE, app, out
from flows.cli.store import catalog, samples


@app.command()
def demo(
    ctx: typer.Context,
    out_dir: Path = typer.Argument(Path("data/demo"), help="Where samples, store, runs, report.html go."),
    episodes_per_task: int = typer.Option(2, min=1, help="Robot episodes per Meta-World task."),
    lam_steps: int = typer.Option(200, min=1, help="LaWM training steps (stage 1)."),
    policy_steps: int = typer.Option(300, min=1, help="Policy distillation steps (stage 2)."),
    eval_tasks: str = typer.Option(None, help="Comma-separated tasks to evaluate (default: the corpus's five)."),
    eval_episodes: int = typer.Option(2, min=1, help="Held-out episodes per task."),
    eval_max_steps: int = typer.Option(None, min=1, help="Control steps per episode (default: Meta-World's 125)."),
    latency_calls: int = typer.Option(50, min=0, help="Chunks timed for the latency figures (0 = skip)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """The whole chain on the embedded samples, as the Prefect flow `lawam_chain`: render →
    ingest → train-lam → label → distill → eval, then the catalog and OUT_DIR/report.html
    (hours per source, throughput per stage, stage-1 curves, success rates).

    A second run redoes nothing that is done: the samples are cached, the ingest and the
    labels skip what the store holds, and finished runs on the same data and settings are kept.
    """
    from pipeline.samples.tasks import check_tasks

    # a typo fails now, not after training
    tasks = list(check_tasks([t.strip() for t in eval_tasks.split(",") if t.strip()], "--eval-tasks")) \
        if eval_tasks else None
    # No server configured: the flows run on Prefect's ephemeral one, which may start slowly on a busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    samples(out_dir / "samples", tasks=None, episodes_per_task=episodes_per_task, human_tasks=None,
            human_episodes_per_task=2, seed=0, image_size=128, cameras="corner", progress=progress)
    from flows.chain import lawam_chain
    from pipeline.samples import sample_sources
    from schemas import CorpusConfig, StoreConfig
    from schemas.curation import CurationConfig
    from schemas.training import DistillConfig, LamConfig

    if not ctx.meta.get(VERBOSE):
        # A failed stage ends in one line below; Prefect's own report of it (a traceback) only with -v.
        for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    cfg = CorpusConfig(name="demo", sources=sample_sources(out_dir / "samples"),
                       store=StoreConfig(uri=str((out_dir / "store").resolve())), curation=CurationConfig())
    lam = LamConfig()
    lam = lam.model_copy(update={"optim": lam.optim.model_copy(update={"steps": lam_steps, "eval_every": 0,
                                                                       "checkpoint_every": 0})})
    policy = DistillConfig()
    policy = policy.model_copy(update={"optim": policy.optim.model_copy(
        update={"steps": policy_steps, "eval_every": 0, "checkpoint_every": 0})})
    result = lawam_chain(cfg, str((out_dir / "runs").resolve()), lam=lam, policy=policy, eval_tasks=tasks,
                         eval_episodes=eval_episodes, eval_max_steps=eval_max_steps, latency_calls=latency_calls,
                         report=str(out_dir / "report.html"), progress=progress)
    table = Table(title="lawam chain")
    for col in ("stage", "done", "seconds", "throughput", "store version"):
        table.add_column(col)
    for r in result.stages:
        done = f"{r['items']} {r['unit']}"
        if "added" in r:  # the ingest
            done = f"+{r['added']} episodes ({done}), {r['skipped']} unchanged, {r['quarantined']} quarantined"
        elif "episodes" in r:  # the labels
            done = f"+{r['episodes']} episodes ({done}), {r['skipped']} labelled already"
        done += " (reused)" if r.get("reused") else ""
        table.add_row(r["stage"], done, f"{r['seconds'] or 0:.1f}", r["throughput"] or "",
                      f"{r['version_before'] or ''} -> {r['version_after'] or ''}" if r["version_before"] else "")
    out.print(table)
    catalog(cfg.store.uri, version_id=None, as_json=False, export=None, curation=None)
    out.print(f"LaWM {result.lam_dir}\npolicy {result.policy_dir}\nevaluation {result.eval_dir}", highlight=False)
    out.print(f"wrote {result.report}", highlight=False)


@app.command()
def serve(
    corpus: Path = typer.Argument(..., help="The corpus YAML whose refresh to schedule."),
    cron: str = typer.Option("0 3 * * *", help="When the refresh runs (cron, the server's time zone: UTC)."),
    runs_dir: Path = typer.Option(None, help="Where the chain deployment writes its runs (default: runs/ beside "
                                             "the store)."),
    limit: int = typer.Option(None, min=1, help="Most flow runs at once in this process (default: no limit)."),
) -> None:
    """Register the corpus's deployments on the Prefect server (PREFECT_API_URL) and run them.

    `refresh-<corpus>` runs on the cron schedule (ingest every source, then label new
    episodes when the corpus names `labels: {lam: ...}`); `chain-<corpus>` runs the whole
    chain when triggered (`prefect deployment run lawam_chain/chain-<corpus>`). One refresh
    per store at a time: a second trigger waits for the first. Ctrl-C stops serving.
    """
    from flows.serve import serve_corpus

    serve_corpus(corpus, cron=cron, runs_dir=runs_dir, limit=limit)

