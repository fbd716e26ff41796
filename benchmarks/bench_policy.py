"""Stage 2 end to end on Meta-World: closed-loop success of LaWAM beside behaviour cloning, and latency.

Side by side, in one run, on the same store, the same budget and the same held-out scenes:

  corpus      5 tasks x N scripted-expert robot episodes (20 Hz control, one row per frame)
              + the human stand-in, rendered (cached under --work), ingested at 20 fps with
              the default encoder (random-init vit_small DINOv2 at 112 px, 4x4 grid)
  LaWM        `train_lam` (k = --k-seconds), then `label_store`: the label set
  policies    `distill` for each arm x action fraction: LaWAM (subgoal) and BC (--no-subgoal,
              the same network without the subgoal and the latent term), with every robot
              episode's actions (1.0) and with half of them (0.5: the other half are
              action-free video, as the human stand-in is)
  eval        `evaluate` on --eval-episodes held-out layouts per task (stream "eval",
              refused if any is a training layout), receding horizon
  latency     ms per action chunk at batch 1: policy alone and encoder + policy from a frame

Prints a table and writes benchmarks/results/policy.json. Every stage is cached under --work
(a folder that exists is reused), so a second run only redoes what is missing.
Usage: python -m benchmarks.bench_policy [--episodes 30] [--eval-episodes 20] [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("MUJOCO_GL", "egl")

from model.checkpoint import read_card  # noqa: E402
from model.distill import distill  # noqa: E402
from model.labeler import IdmLabeler  # noqa: E402
from model.policy import KIND, load_policy  # noqa: E402
from model.train_lam import train_lam  # noqa: E402
from pipeline.evaluation.evaluate import evaluate, training_samples  # noqa: E402
from pipeline.ingest import ingest_corpus  # noqa: E402
from pipeline.label import label_store  # noqa: E402
from pipeline.progress import progress_bar  # noqa: E402
from pipeline.samples import make_samples, sample_sources  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402
from schemas import CorpusConfig, StoreConfig  # noqa: E402
from schemas.cards import PolicyCard  # noqa: E402
from schemas.training import DistillConfig, LamConfig, load_distill_config, load_lam_config  # noqa: E402

TASKS = ("reach-v3", "push-v3", "drawer-open-v3", "button-press-topdown-v3", "door-open-v3")
REPO = Path(__file__).resolve().parents[1]


def corpus(work: Path, episodes: int, human_episodes: int, fps: float) -> str:
    samples = work / "samples"
    t = time.perf_counter()
    make_samples(samples, tasks=TASKS, episodes_per_task=episodes, human_episodes_per_task=human_episodes,
                 seed=0, image_size=128, progress=True)
    print(f"samples       {time.perf_counter() - t:8.1f} s (cached after the first run)")
    sources = [s.model_copy(update={"fps": fps}) for s in sample_sources(samples)]
    cfg = CorpusConfig(name="bench-policy", sources=sources, store=StoreConfig(uri=str(work / "store")))
    report = ingest_corpus(cfg, progress=True)
    print(f"ingest        {report.seconds:8.1f} s, +{report.added} episodes ({report.skipped} already in)")
    return cfg.store.uri


def lawm(uri: str, work: Path, cfg: LamConfig) -> Path:
    out = work / "lam"
    if not (out / "card.json").exists():
        t = time.perf_counter()
        card = train_lam(uri, out, cfg, progress=progress_bar)
        m = card.metrics
        print(f"train-lam     {time.perf_counter() - t:8.1f} s: held-out forward {m['forward_over_copy']:.2f}x copy, "
              f"z explains {100 * m['z_explains']:.0f}%, probe R^2 {m.get('probe_r2_z', float('nan')):.2f}")
    report = label_store(uri, IdmLabeler(str(out)), progress=True)
    print(f"label         +{report.episodes} episodes, {report.pairs_per_s:.0f} pairs/s")
    return out


def policy(uri: str, lam: Path, out: Path, cfg: DistillConfig) -> PolicyCard:
    if (out / "card.json").exists():
        return read_card(out, KIND)
    t = time.perf_counter()
    card = distill(uri, out, lam if cfg.model.subgoal else None, cfg, progress=progress_bar)
    print(f"distill {out.name:<14} {time.perf_counter() - t:6.1f} s: held-out action L1 "
          f"{card.metrics.get('heldout_action', float('nan')):.4f}")
    return card


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=30, help="robot training episodes per task (5 tasks)")
    p.add_argument("--human-episodes", type=int, default=10, help="human stand-in episodes per task (2 tasks)")
    p.add_argument("--fps", type=float, default=20.0, help="sampling rate of the corpus (the video is 20 fps)")
    p.add_argument("--k-seconds", type=float, default=0.25, help="LaWM frame gap (the clips last 0.5-1.5 s)")
    p.add_argument("--lam-steps", type=int, default=1500)
    p.add_argument("--steps", type=int, default=2000, help="distillation steps, the same for every arm")
    p.add_argument("--arms", default="lawam,bc", help="lawam (subgoal) and/or bc (--no-subgoal)")
    p.add_argument("--fractions", default="1.0,0.5", help="action fractions to train each arm at")
    p.add_argument("--eval-episodes", type=int, default=20, help="held-out episodes per task")
    p.add_argument("--execute-steps", type=int, default=None, help="actions executed per chunk (default H/2)")
    p.add_argument("--seed", type=int, default=1, help="evaluation seed")
    p.add_argument("--workers", type=int, default=2, help="evaluation Ray workers")
    p.add_argument("--lam-config", default=str(REPO / "configs" / "lam.yaml"))
    p.add_argument("--config", default=str(REPO / "configs" / "distill.yaml"))
    p.add_argument("--work", default=str(REPO / "data" / "bench-policy"), help="samples, store, runs (cached)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "policy.json"))
    args = p.parse_args()
    work = Path(args.work)
    uri = corpus(work, args.episodes, args.human_episodes, args.fps)
    store = FeatureStore.open(uri)
    lam_cfg = load_lam_config(args.lam_config)
    lam_cfg = lam_cfg.model_copy(update={
        "pairs": lam_cfg.pairs.model_copy(update={"k_seconds": args.k_seconds}),
        "optim": lam_cfg.optim.model_copy(update={"steps": args.lam_steps})})
    lam = lawm(uri, work, lam_cfg)
    base = load_distill_config(args.config)
    base = base.model_copy(update={"optim": base.optim.model_copy(update={"steps": args.steps})})
    layouts, record = training_samples(uri, None)
    results: dict = {"machine": {"cpus": os.cpu_count()}, "params": vars(args), "store_version": store.version,
                     "episodes": len(store), "frames": int(store.frames.sum()), "lam": str(lam),
                     "lam_metrics": read_card(lam, "lawm").metrics, "runs": {}}
    for fraction in [float(f) for f in args.fractions.split(",")]:
        for arm in args.arms.split(","):
            name = f"{arm}-{fraction:g}"
            cfg = base.model_copy(update={"action_fraction": fraction,
                                          "model": base.model.model_copy(update={"subgoal": arm == "lawam"})})
            out = work / "runs" / name
            card = policy(uri, lam, out, cfg)
            t = time.perf_counter()
            report = evaluate(partial(load_policy, str(out)), tasks=TASKS, episodes=args.eval_episodes,
                              seed=args.seed, out_dir=out / "eval", camera=record.camera,
                              image_size=record.image_size, training_layouts=layouts,
                              execute_steps=args.execute_steps, workers=args.workers, progress=True,
                              policy=str(out), latency_calls=200)
            result = json.loads((out / "eval" / "results.json").read_text())
            results["runs"][name] = {"arm": arm, "action_fraction": fraction, "train_metrics": card.metrics,
                                     "train_wall_s": card.wall_time_s, "eval_wall_s": time.perf_counter() - t,
                                     "success": result["overall"], "tasks": result["tasks"],
                                     "latency": result.get("latency")}
            print(f"eval {name:<10} {report.summary()}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=float))
    print_table(results)
    print("wrote", args.out)


def print_table(results: dict) -> None:
    runs = results["runs"]
    tasks = list(next(iter(runs.values()))["tasks"]) if runs else []
    head = f"{'run':<12}{'mean':>8}" + "".join(f"{t.removesuffix('-v3')[:12]:>14}" for t in tasks)
    print(head)
    for name, r in runs.items():
        row = f"{name:<12}{100 * r['success']['success_rate']:>7.0f}%"
        row += "".join(f"{100 * r['tasks'][t]['success_rate']:>13.0f}%" for t in tasks)
        print(row)
    for name, r in runs.items():
        lat = (r.get("latency") or {}).get("cpu")
        if lat:
            print(f"latency {name:<10} policy {lat['policy_ms']['median']:.2f} ms (p95 {lat['policy_ms']['p95']:.2f}), "
                  f"encoder+policy {lat['encoder_policy_ms']['median']:.1f} ms "
                  f"(p95 {lat['encoder_policy_ms']['p95']:.1f})")


if __name__ == "__main__":
    main()
