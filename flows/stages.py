"""Prefect flows over the training stages, each a thin wrapper over its library function:

    train_lam        model.train_lam.train_lam          stage 1: the latent world model
    label_corpus     pipeline.label.label_store         the LaWM's latent actions, as a label set
    distill_policy   model.distill.distill              stage 2: the LaWAM policy
    evaluate_policy  model.evaluate.evaluate_policy_dir  closed-loop success in Meta-World

Each publishes a markdown artifact and a table artifact (counts, throughput, store versions
before → after, metrics) and retries only on infrastructure faults (`flows.common`).
`reuse=True` on the trainers and the evaluation returns a finished run's result instead of
redoing it when that run read the same data with the same settings (see `finished_run`).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import RETRIES, RETRY_DELAY_S, publish, retry_on_infrastructure, stage_row
from pipeline.evaluation.results import EvalReport
from pipeline.label import LabelReport
from schemas.cards import Card, LawmCard, PolicyCard, StoppedRun
from schemas.training import DistillConfig, LamConfig, with_steps

log = logging.getLogger(__name__)
_task = partial(task, retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, retry_condition_fn=retry_on_infrastructure)


def _episodes(store_uri: str, version: str) -> list[tuple]:
    from pipeline.store import FeatureStore

    eps = FeatureStore.open(store_uri, version).episodes(["source", "episode_id", "content_hash", "instruction"])
    return sorted(zip(*(eps[c].to_pylist() for c in ("source", "episode_id", "content_hash", "instruction")),
                      strict=True))


def finished_run(out_dir: str | Path, store_uri: str, version: str | None, config: dict[str, Any]) -> Card | None:
    """The card of the finished run in `out_dir` when it trained with `config` on the same
    episodes (same keys, content and instructions) as `store_uri` at `version` (default newest);
    else None. Labels written since do not count for a LaWM: it never reads them."""
    from model.checkpoint import read_card
    from model.loop import resolve_version

    if not (Path(out_dir) / "card.json").is_file():
        return None
    card = read_card(out_dir)
    if card.config != config or card.store.uri != store_uri:
        return None
    target = resolve_version(store_uri, version)
    if card.store.version == target:
        return card
    if isinstance(card, LawmCard) and _episodes(store_uri, card.store.version) == _episodes(store_uri, target):
        return card
    return None


def finished_policy(out_dir: str | Path, store_uri: str, version: str | None, lam_dir: str,
                    cfg: DistillConfig) -> PolicyCard | None:
    """`finished_run` for a policy: also distilled from the LaWM in `lam_dir` (whose k the
    saved config carries)."""
    from model.checkpoint import read_card

    k = read_card(lam_dir, "lawm").k_seconds
    saved = cfg.model_copy(update={"pairs": cfg.pairs.model_copy(update={"k_seconds": k})})
    card = finished_run(out_dir, store_uri, version, saved.model_dump(mode="json"))
    same_lawm = isinstance(card, PolicyCard) and card.lawm is not None and card.lawm.dir == str(Path(lam_dir).resolve())
    return card if same_lawm else None


def _metric_rows(stage: str, card: Card) -> list[dict]:
    return [{"stage": stage, "metric": k, "value": v} for k, v in sorted(card.metrics.items())]


def _card_markdown(title: str, out_dir: Path, card: Card) -> str:
    rows = [("folder", f"`{out_dir}`"), ("store", f"`{card.store.uri}` @ {card.store.version}"),
            ("steps", card.steps), ("wall time", f"{card.wall_time_s:.0f} s"),
            ("throughput", f"{card.pairs_per_s:.0f} pairs/s"), ("weights sha256", card.weights_sha256[:16])]
    if card.label_set:
        rows.append(("label set", f"`{card.label_set}`"))
    if card.reused:
        rows.append(("reused", "yes: a finished run on the same data and settings"))
    md = f"## {title}\n\n| | |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)
    md += "\n| metric | value |\n|---|---|\n" + "".join(f"| {k} | {v:.4g} |\n" for k, v in card.metrics.items())
    return md


def train_row(stage: str, card: Card) -> dict:
    """The stage row of a trainer's card (as the flows return it: with `reused`)."""
    return stage_row(stage, items=card.steps, unit="steps", seconds=0.0 if card.reused else card.wall_time_s,
                     version_before=card.store.version, pairs_per_s=card.pairs_per_s, reused=card.reused)


def eval_row(report: EvalReport) -> dict:
    o, reused = report.results["overall"], bool(report.results.get("reused"))
    return stage_row("evaluate", items=o["episodes"], unit="episodes",
                     seconds=0.0 if reused else report.results["seconds"], success_rate=o["success_rate"],
                     reused=reused)


@_task(name="train-lam")
def _train_lam_task(store_uri, out_dir, cfg, version, steps, device, progress):
    from model.train_lam import train_lam as run
    from pipeline.progress import progress_bar

    return run(store_uri, out_dir, cfg, version=version, steps=steps, device=device,
               progress=progress_bar if progress else None)


@flow(name="train_lam", validate_parameters=False)
def train_lam(store_uri: str, out_dir: str, cfg: LamConfig | None = None, *, version: str | None = None,
              steps: int | None = None, device: str = "auto", reuse: bool = False,
              progress: bool = False) -> LawmCard | StoppedRun:
    """Train a LaWM (`model.train_lam.train_lam`) and return its card; artifacts: metrics."""
    cfg = cfg or LamConfig()
    cfg = with_steps(cfg, steps)
    card = finished_run(out_dir, store_uri, version, cfg.model_dump(mode="json")) if reuse else None
    reused = card is not None
    if card is None:
        card = _train_lam_task(store_uri, out_dir, cfg, version, None, device, progress)
    return _publish_training("train_lam", "LaWM (stage 1)", "LaWM", out_dir, card, reused)


def _publish_training(stage: str, title: str, what: str, out_dir: str, card: Card | StoppedRun,
                      reused: bool) -> Card | StoppedRun:
    """A training flow's ending: the card marked reused or not, a log line, its artifacts."""
    if isinstance(card, StoppedRun):
        get_run_logger().warning("%s: stopped at step %s: continue with --resume", stage, card.steps)
        return card
    card = card.model_copy(update={"reused": reused})
    get_run_logger().info("%s: %s %s (%d steps)", stage, "reused" if reused else "trained", out_dir, card.steps)
    publish(stage.replace("_", "-"), _card_markdown(title, Path(out_dir), card),
            [train_row(stage, card)] + _metric_rows(stage, card), f"{what} {out_dir}")
    return card


@_task(name="label")
def _label_task(store_uri, lam_dir, version, actors, progress):
    from model.labeler import IdmLabeler
    from pipeline.label import label_store

    return label_store(store_uri, IdmLabeler(str(lam_dir)), version=version, num_actors=actors, progress=progress)


def label_row(report: LabelReport) -> dict:
    return stage_row("label", items=report.pairs, unit="pairs", seconds=report.seconds,
                     version_before=report.version_before, version_after=report.version_after,
                     episodes=report.episodes, skipped=report.skipped, label_set=report.set_id)


@flow(name="label_corpus", validate_parameters=False)
def label_corpus(store_uri: str, lam_dir: str, *, version: str | None = None, actors: int | None = None,
                 progress: bool = False) -> LabelReport:
    """Label the store's episodes that lack current labels of the LaWM's set (`label_store`)."""
    report = _label_task(store_uri, lam_dir, version, actors, progress)
    publish("label-report", report.to_markdown(), [label_row(report)], f"labels in {store_uri}")
    get_run_logger().info("label: +%d episodes, %d already labelled", report.episodes, report.skipped)
    return report


@_task(name="distill")
def _distill_task(store_uri, out_dir, lam_dir, cfg, version, device, progress):
    from model.distill import distill
    from pipeline.progress import progress_bar

    return distill(store_uri, out_dir, lam_dir, cfg, version=version, device=device,
                   progress=progress_bar if progress else None)


@flow(name="distill_policy", validate_parameters=False)
def distill_policy(store_uri: str, out_dir: str, lam_dir: str | None, cfg: DistillConfig | None = None, *,
                   version: str | None = None, steps: int | None = None, device: str = "auto",
                   reuse: bool = False, progress: bool = False) -> PolicyCard | StoppedRun:
    """Distil a LaWAM policy (`model.distill.distill`) and return its card; artifacts: metrics."""
    cfg = cfg or DistillConfig()
    cfg = with_steps(cfg, steps)
    card = finished_policy(out_dir, store_uri, version, lam_dir, cfg) if reuse and lam_dir is not None else None
    reused = card is not None
    if card is None:
        card = _distill_task(store_uri, out_dir, lam_dir, cfg, version, device, progress)
    return _publish_training("distill", "Policy (stage 2)", "policy", out_dir, card, reused)


@_task(name="evaluate")
def _evaluate_task(policy_dir, tasks, episodes, seed, out_dir, max_steps, workers, video, latency_calls, progress):
    from model.evaluate import evaluate_policy_dir

    return evaluate_policy_dir(policy_dir, tasks=tasks, episodes=episodes, seed=seed, out_dir=out_dir,
                               max_steps=max_steps, workers=workers, video=video, progress=progress,
                               latency_calls=latency_calls)


def _finished_eval(policy_dir: str, out_dir: Path, tasks, episodes: int, seed: int,
                   max_steps: int | None) -> EvalReport | None:
    """The results in `out_dir` when they are of these weights and settings; None when there
    are none, or they are damaged (the evaluation runs again and rewrites them)."""
    path = out_dir / "results.json"
    if not path.is_file():
        return None
    from model.checkpoint import read_card
    from model.policy import KIND
    from pipeline.errors import one_line
    from pipeline.evaluation.results import read_results
    from schemas.errors import ConfigError

    try:
        results = read_results(path)
    except ConfigError as e:
        log.warning("%s; evaluating again", one_line(e))
        return None
    card = read_card(policy_dir, KIND)
    s = results.get("settings", {})
    same = (results.get("policy", {}).get("weights_sha256") == card.weights_sha256
            and s.get("episodes_per_task") == episodes and s.get("seed") == seed and s.get("max_steps") == max_steps
            and (not tasks or s.get("tasks") == list(tasks)))
    return EvalReport(out_dir, results) if same else None


@flow(name="evaluate_policy", validate_parameters=False)
def evaluate_policy(policy_dir: str, *, out_dir: str | None = None, tasks: list[str] | None = None,
                    episodes: int = 20, seed: int = 0, max_steps: int | None = None, workers: int | None = None,
                    video: bool = True, latency_calls: int = 200, reuse: bool = False,
                    progress: bool = False) -> EvalReport:
    """Closed-loop success of a policy on held-out layouts (`pipeline.evaluation.evaluate.evaluate`, as
    `lawam eval` runs it: `model.evaluate.evaluate_policy_dir`); results.json and success.png in
    `out_dir` (default POLICY/eval)."""
    policy_dir = str(Path(policy_dir).resolve())
    out = Path(out_dir) if out_dir else Path(policy_dir) / "eval"
    report = _finished_eval(policy_dir, out, tasks, episodes, seed, max_steps) if reuse else None
    if report is None:
        report = _evaluate_task(policy_dir, tasks, episodes, seed, str(out), max_steps, workers, video,
                                latency_calls, progress)
    else:
        report.results["reused"] = True  # in memory only: results.json stays as the evaluation wrote it
    rows = [eval_row(report)]
    rows += [{"stage": "evaluate", "metric": f"success {t}", "value": r["success_rate"]}
             for t, r in report.per_task.items()]
    publish("eval-report", report.to_markdown(), rows, f"evaluation of {policy_dir}")
    get_run_logger().info("evaluate: %s", report.summary())
    return report
