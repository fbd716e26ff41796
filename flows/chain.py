"""Prefect flow `lawam_chain`: refresh → train_lam → label → distill → evaluate, one run.

Each stage is its own (sub)flow with its artifacts; the chain adds a table of every stage
and, given `report`, the HTML page of `pipeline.evaluation.report.write_report`. With `reuse`, a
second run redoes nothing that is already done: the ingest and the labels skip what the
store holds, and a finished LaWM / policy / evaluation on the same data and settings is
kept (`flows.stages.finished_run`). New runs go in `runs_dir/lam-<store version>` and
`runs_dir/policy-<store version>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow

from flows.common import as_corpus, publish
from flows.ingest import ingest_row
from flows.refresh import curate_row, refresh_corpus
from flows.stages import (
    distill_policy,
    eval_row,
    evaluate_policy,
    finished_policy,
    finished_run,
    label_corpus,
    label_row,
    train_lam,
    train_row,
)
from model.loop import resolve_version
from schemas import CorpusConfig
from schemas.training import DistillConfig, LamConfig


@dataclass
class ChainResult:
    lam_dir: str
    policy_dir: str
    eval_dir: str
    stages: list[dict] = field(default_factory=list)  # one `stage_row` per stage
    report: str | None = None  # the HTML page, when asked for


def _run_dir(runs: Path, prefix: str, store_uri: str, version: str, config: dict | None) -> Path:
    """A finished run of this config on the same data (`config` given), else a new folder named
    by the version (and a number when a run of other settings, or one cut short, holds that name)."""
    if config is not None:
        for d in sorted(runs.glob(f"{prefix}-*")):
            if finished_run(d, store_uri, version, config) is not None:
                return d
    new, n = runs / f"{prefix}-{version[:12]}", 1
    while new.exists():
        n += 1
        new = runs / f"{prefix}-{version[:12]}-{n}"
    return new


def _policy_dir(runs: Path, store: str, version: str, lam_dir: str, policy: DistillConfig, reuse: bool) -> Path:
    if reuse:
        for d in sorted(runs.glob("policy-*")):
            if finished_policy(d, store, version, lam_dir, policy) is not None:
                return d
    return _run_dir(runs, "policy", store, version, None)


@flow(name="lawam_chain", validate_parameters=False)
def lawam_chain(cfg: CorpusConfig | str, runs_dir: str, *, lam: LamConfig | None = None,
                policy: DistillConfig | None = None, eval_tasks: list[str] | None = None, eval_episodes: int = 2,
                eval_max_steps: int | None = None, latency_calls: int = 50, reuse: bool = True,
                report: str | None = None, progress: bool = False) -> ChainResult:
    """The whole job on one corpus; returns where each stage wrote and a row per stage."""
    cfg = as_corpus(cfg)
    runs = Path(runs_dir)
    store = cfg.store.uri
    refreshed = refresh_corpus(cfg, label=False, progress=progress)
    stages = [ingest_row(refreshed.ingest)] + ([curate_row(refreshed.curation)] if refreshed.curation else [])

    lam = lam or LamConfig()
    version = resolve_version(store, None)
    lam_dir = _run_dir(runs, "lam", store, version, lam.model_dump(mode="json") if reuse else None)
    card = train_lam(store, str(lam_dir), lam, version=version, reuse=reuse, progress=progress)
    stages.append(train_row("train_lam", card))

    labels = label_corpus(store, str(lam_dir), progress=progress)
    stages.append(label_row(labels))

    policy = policy or DistillConfig()
    version = resolve_version(store, None)
    policy_dir = _policy_dir(runs, store, version, str(lam_dir), policy, reuse)
    pcard = distill_policy(store, str(policy_dir), str(lam_dir), policy, version=version, reuse=reuse,
                           progress=progress)
    stages.append(train_row("distill", pcard))

    ev = evaluate_policy(str(policy_dir), tasks=eval_tasks, episodes=eval_episodes, max_steps=eval_max_steps,
                         latency_calls=latency_calls, reuse=reuse, progress=progress)
    stages.append(eval_row(ev))
    result = ChainResult(str(lam_dir), str(policy_dir), str(ev.out_dir), stages)
    if report is not None:
        from pipeline.catalog import summarize
        from pipeline.evaluation.report import write_report

        result.report = str(write_report(report, summarize(store), stages, lam_dir=lam_dir,
                                          lam_metrics=getattr(card, "metrics", None), eval_dir=ev.out_dir,
                                          title=f"lawam: {cfg.name}"))
    md = "## lawam chain\n\n| stage | items | seconds | throughput |\n|---|---|---|---|\n" + "".join(
        f"| {r['stage']} | {r['items']} {r['unit']} | {r['seconds'] or 0:.1f} | {r['throughput'] or ''} |\n"
        for r in stages)
    publish("lawam-chain", md, stages, f"chain of {cfg.name}")
    return result
