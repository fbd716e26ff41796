"""Stage 2 end to end on Meta-World: closed-loop success of LaWAM beside behaviour cloning, and latency.

Side by side, on one store, the same budget and the same held-out scenes:

  corpus      `benchmarks.corpus` (9 tasks x 30 scripted robot episodes of >= 2 s at 20 fps
              + the human stand-in), rendered and ingested once, cached; one store per encoder
              numerics (--runtime / --precision), its runs in a folder of their own
  LaWM        `train_lam` with configs/lam.yaml (or --lam-config), then `label_store`; with
              --human-value also the same LaWM trained without the human clips
  policies    `distill` for each arm x action fraction: LaWAM (subgoal) and BC (--no-subgoal,
              the same network without the subgoal and the latent term), with every robot
              episode's actions (1.0) and with half of them (0.5: the other half are action-free
              video, as the human stand-in is); `lawam-nohuman`: LaWAM from the LaWM trained
              without human clips, distilled from robot episodes only
  eval        `evaluate` on --eval-episodes held-out layouts per task for each of --seeds
              (stream "eval", refused if any is a training layout), receding horizon, the live
              frames encoded with the store's numerics (the policy card's encoder identity); every
              (policy, seed) is cached in its folder, so seeds can be run in several sittings
  latency     ms per action chunk at batch 1: policy alone and encoder + policy from a frame
  goal probe  (--probe-goal) ridge from f_t to the goal position of reach/push episodes, held
              out by episode: can the features see what the policy must reach?

Prints a table (success over all seeds, Wilson 95% CI) and writes benchmarks/results/policy.json.
Usage: python -m benchmarks.bench_policy [--seeds 1,2] [--eval-episodes 20] [--steps 2000]
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.corpus import HUMAN_SOURCE, POLICY_TASKS, REPO, WORK, add_numerics_args, bench_corpus  # noqa: E402
from model.checkpoint import read_card  # noqa: E402
from model.distill import distill  # noqa: E402
from model.labeler import IdmLabeler  # noqa: E402
from model.metrics import ridge_r2  # noqa: E402
from model.policy import KIND, load_policy  # noqa: E402
from model.train_lam import train_lam  # noqa: E402
from model.value import source_value  # noqa: E402
from pipeline.evaluation.evaluate import evaluate, training_samples  # noqa: E402
from pipeline.evaluation.results import wilson_interval  # noqa: E402
from pipeline.label import label_store  # noqa: E402
from pipeline.progress import progress_bar  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402
from schemas.training import DistillConfig, LamConfig, load_distill_config, load_lam_config  # noqa: E402

ROBOT_SOURCE = "metaworld"


def lawms(corpus, work: Path, cfg: LamConfig, human_value: bool) -> tuple[dict[str, Path], dict]:
    """The LaWM (and, for the human-value arms, the same LaWM without the human clips: one
    `model.value.source_value`, both scored on the same held-out episodes), labelled. A LaWM
    already in the work dir is the arm as trained: its config and store version are what the
    run without the human clips gets (labelling commits a newer version; the features are
    the same)."""
    t = time.perf_counter()
    first, version = work / "value" / "with", None
    if (first / "card.json").exists():
        card = read_card(first, "lawm")
        cfg, version = LamConfig.model_validate(card.config), card.store.version
    if human_value:
        report = source_value(corpus.store, HUMAN_SOURCE, out_dir=work / "value", cfg=cfg, steps=None,
                              version=version, truth=corpus.human_truth(), progress=progress_bar)
        dirs = {"lawam": Path(report.runs["with"]), "lawam-nohuman": Path(report.runs["without"])}
        value = report.to_json()
    else:
        dirs, value = {"lawam": first}, {}
        if version is None:  # the very run source_value's "with" arm is
            train_lam(corpus.store, first, cfg, progress=progress_bar)
    print(f"LaWM(s) ready in {time.perf_counter() - t:.0f} s")
    for out in dirs.values():
        report = label_store(corpus.store, IdmLabeler(str(out)), progress=True)
        if report.episodes:
            print(f"label {out.name:<14} +{report.episodes} episodes, {report.pairs_per_s:.0f} pairs/s")
    return dirs, value


def policy(uri: str, lam: Path | None, out: Path, cfg: DistillConfig) -> dict:
    if (out / "card.json").exists():
        return read_card(out, KIND)
    t = time.perf_counter()
    card = distill(uri, out, lam, cfg, progress=progress_bar)
    print(f"distill {out.name:<18} {time.perf_counter() - t:6.0f} s: held-out action L1 "
          f"{card.metrics.get('heldout_action', float('nan')):.4f}")
    return card


def evaluated(out: Path, seed: int, args, layouts, record) -> dict:
    """results.json of the policy in `out` at evaluation seed `seed` (cached in out/eval-s<seed>)."""
    folder = out / f"eval-s{seed}"
    results = folder / "results.json"
    if results.exists() and json.loads(results.read_text())["settings"]["episodes_per_task"] == args.eval_episodes:
        return json.loads(results.read_text())
    t = time.perf_counter()
    report = evaluate(partial(load_policy, str(out)), tasks=args.tasks.split(","), episodes=args.eval_episodes,
                      seed=seed, out_dir=folder, camera=record.camera, image_size=record.image_size,
                      training_layouts=layouts, execute_steps=args.execute_steps, workers=args.workers,
                      progress=True, policy=str(out), latency_calls=200 if seed == args.seeds[0] else 0,
                      video=seed == args.seeds[0])
    print(f"eval {out.name:<18} seed {seed}: {report.summary()} ({time.perf_counter() - t:.0f} s)", flush=True)
    return json.loads(results.read_text())


def pooled(per_seed: list[dict]) -> dict:
    """Success over every episode of every seed, per task and overall, with Wilson 95% CIs."""
    tasks: dict[str, list[int]] = {}
    for r in per_seed:
        for task, t in r["tasks"].items():
            k, n = tasks.get(task, [0, 0])
            tasks[task] = [k + t["successes"], n + t["episodes"]]

    def rate(k: int, n: int) -> dict:
        return {"successes": k, "episodes": n, "success_rate": k / n if n else 0.0, "ci95": list(wilson_interval(k, n))}

    out = {"tasks": {task: rate(k, n) for task, (k, n) in tasks.items()}}
    out["overall"] = rate(sum(k for k, _ in tasks.values()), sum(n for _, n in tasks.values()))
    return out


def probe_goal(uri: str, samples: Path, heldout: float = 0.2, first: int = 3) -> dict:
    """Ridge R² from f_t (the whole token grid, flattened) to the goal xyz of reach and push
    episodes, held out by episode: over every frame, and over each episode's first `first`
    frames only, where the arm has not yet moved toward the goal (what the policy sees when
    it must choose where to go: later frames also show the goal through the arm's motion).
    The ridge's alpha is chosen per probe by cross-validation over the training episodes
    (`ALPHAS`, 4 folds by episode), so a 4x4 and an 8x8 grid (16 vs 64 tokens of 384) are
    each probed at their own best regularisation; held-out episodes are scored once, with
    the chosen alpha."""
    from pipeline.store.pairs import is_heldout

    layouts = json.loads((samples / "robot" / "meta" / "lawam_samples.json").read_text())["episodes"]
    store = FeatureStore.open(uri)
    table = store.episodes()
    out = {}
    for task in ("reach-v3", "push-v3"):
        x: dict = {True: [], False: []}
        y: dict = {True: [], False: []}
        t: dict = {True: [], False: []}
        e: dict = {True: [], False: []}
        for row, key in enumerate(store.keys):
            if table["source"][row].as_py() != ROBOT_SOURCE:
                continue
            ep = layouts[int(key.split("@")[0].rsplit("_", 1)[-1])]  # metaworld/episode_000123[@camera]
            if ep["task"] != task:
                continue
            f = store.features(row).astype(np.float32)
            held = is_heldout(key, None, heldout)
            x[held].append(f.reshape(len(f), -1))
            y[held].append(np.repeat(np.asarray(ep["rand_vec"][3:6], np.float32)[None], len(f), 0))
            t[held].append(np.arange(len(f)))
            e[held].append(np.full(len(f), row))
        if not (x[True] and x[False]):
            continue
        xa, ya, ta, ea = (np.concatenate(v[False]) for v in (x, y, t, e))  # training episodes
        xb, yb, tb = (np.concatenate(v[True]) for v in (x, y, t))  # held out
        out[task] = {"train_episodes": len(x[False]), "heldout_episodes": len(x[True])}
        for name, a, b in (("all_frames", slice(None), slice(None)), (f"first_{first}_frames", ta < first, tb < first)):
            alpha = cv_alpha(xa[a], ya[a], ea[a])
            out[task][name] = ridge_r2(xa[a], ya[a], xb[b], yb[b], alpha=alpha)
            out[task][f"{name}_alpha"] = alpha
    return out


ALPHAS = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


def cv_alpha(x: np.ndarray, y: np.ndarray, episodes: np.ndarray, folds: int = 4) -> float:
    """The ridge alpha of `ALPHAS` with the best mean R² over `folds` folds of whole episodes."""
    fold = np.unique(episodes, return_inverse=True)[1] % folds
    scores = [np.mean([ridge_r2(x[fold != k], y[fold != k], x[fold == k], y[fold == k], alpha=alpha)
                       for k in range(folds)]) for alpha in ALPHAS]
    return ALPHAS[int(np.argmax(scores))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="grid:4x4", help="token mode of the store (benchmarks.corpus)")
    add_numerics_args(p)
    p.add_argument("--lam-steps", type=int, default=None, help="LaWM steps (default: the config's)")
    p.add_argument("--steps", type=int, default=2000, help="distillation steps, the same for every arm")
    p.add_argument("--arms", default="lawam,bc",
                   help="lawam (subgoal), bc (--no-subgoal), lawam-nohuman; empty: none (e.g. --probe-goal alone)")
    p.add_argument("--fractions", default="1.0,0.5", help="action fractions to train each arm at")
    p.add_argument("--tasks", default=",".join(POLICY_TASKS), help="tasks evaluated")
    p.add_argument("--eval-episodes", type=int, default=20, help="held-out episodes per task and seed")
    p.add_argument("--seeds", default="1,2", help="evaluation seeds (each cached)")
    p.add_argument("--execute-steps", type=int, default=None, help="actions executed per chunk (default H/2)")
    p.add_argument("--workers", type=int, default=2, help="evaluation Ray workers")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--probe-goal", action="store_true", help="probe the goal position from the features")
    p.add_argument("--lam-config", default=str(REPO / "configs" / "lam.yaml"))
    p.add_argument("--config", default=str(REPO / "configs" / "distill.yaml"))
    p.add_argument("--name", default="default", help="folder of this configuration's runs under the work dir")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "policy.json"))
    args = p.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(args.threads)
    corpus = bench_corpus(args.tokens, runtime=args.runtime, precision=args.precision)
    uri = corpus.store
    store = FeatureStore.open(uri)
    work = WORK / "runs" / "policy" / f"{args.name}-{args.tokens.replace(':', '')}{corpus.numerics}"
    lam_cfg = load_lam_config(args.lam_config)
    if args.lam_steps:
        lam_cfg = lam_cfg.model_copy(update={"optim": lam_cfg.optim.model_copy(update={"steps": args.lam_steps})})
    arms = [a for a in args.arms.split(",") if a]
    lams, value = lawms(corpus, work, lam_cfg, "lawam-nohuman" in arms) if arms else ({}, {})
    base = load_distill_config(args.config)
    base = base.model_copy(update={"optim": base.optim.model_copy(update={"steps": args.steps})})
    layouts, record = training_samples(uri, None)
    results: dict = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}, "params": vars(args),
                     "store_version": store.version, "encoder_numerics": store.encoder.numerics,
                     "episodes": len(store), "frames": int(store.frames.sum()),
                     "lam_metrics": {name: read_card(d, "lawm").metrics for name, d in lams.items()},
                     "human_value_lawm": value, "runs": {}}
    if args.probe_goal:
        results["goal_probe_r2"] = probe_goal(uri, corpus.samples)
        print(f"goal position probe R^2 from f_t ({args.tokens}): {results['goal_probe_r2']}")
    for fraction in [float(f) for f in args.fractions.split(",")]:
        for arm in arms:
            name = f"{arm}-{fraction:g}"
            pairs = base.pairs.model_copy(update={"sources": [ROBOT_SOURCE]}) if arm == "lawam-nohuman" else base.pairs
            cfg = base.model_copy(update={"action_fraction": fraction, "pairs": pairs,
                                          "model": base.model.model_copy(update={"subgoal": arm != "bc"})})
            out = work / name
            card = policy(uri, lams.get(arm) if arm != "bc" else None, out, cfg)
            per_seed = [evaluated(out, seed, args, layouts, record) for seed in args.seeds]
            results["runs"][name] = {"arm": arm, "action_fraction": fraction, "train_metrics": card.metrics,
                                     "train_wall_s": card.wall_time_s, **pooled(per_seed),
                                     "per_seed": {s: r["overall"] for s, r in zip(args.seeds, per_seed, strict=True)},
                                     "latency": per_seed[0].get("latency")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=float))
    print_table(results)
    if value:
        print_human_value(results)
    print("wrote", args.out)


def print_table(results: dict) -> None:
    runs = results["runs"]
    tasks = list(next(iter(runs.values()))["tasks"]) if runs else []
    print(f"{'run':<20}{'mean (95% CI)':>18}" + "".join(f"{t.removesuffix('-v3')[:12]:>14}" for t in tasks))
    for name, r in runs.items():
        o = r["overall"]
        row = f"{name:<20}{100 * o['success_rate']:>6.0f}% ({100 * o['ci95'][0]:.0f}-{100 * o['ci95'][1]:.0f})"
        row += "".join(f"{100 * r['tasks'][t]['success_rate']:>13.0f}%" for t in tasks)
        print(row)
    for name, r in runs.items():
        lat = (r.get("latency") or {}).get("cpu")
        if lat:
            print(f"latency {name:<18} policy {lat['policy_ms']['median']:.2f} ms (p95 {lat['policy_ms']['p95']:.2f}), "
                  f"encoder+policy {lat['encoder_policy_ms']['median']:.1f} ms "
                  f"(p95 {lat['encoder_policy_ms']['p95']:.1f})")


def print_human_value(results: dict) -> None:
    """LaWM and LaWAM with vs without the human clips, side by side."""
    print("human clips' value (same budget, same held-out episodes):")
    for r in results["human_value_lawm"]["rows"]:
        if r["key"] in ("forward_mse", "forward_over_copy", "probe_r2_z"):
            print(f"  LaWM {r['kind']:<6} {r['figure']:<26} with {r['with']:.4f}  without {r['without']:.4f}  "
                  f"gain {r['gain']:+.4f}")
    runs = results["runs"]
    for fraction in sorted({r["action_fraction"] for r in runs.values()}, reverse=True):
        a, b = runs.get(f"lawam-{fraction:g}"), runs.get(f"lawam-nohuman-{fraction:g}")
        if a and b:
            print(f"  LaWAM SR at action fraction {fraction:g}: with {100 * a['overall']['success_rate']:.0f}%, "
                  f"without {100 * b['overall']['success_rate']:.0f}%")


if __name__ == "__main__":
    main()
