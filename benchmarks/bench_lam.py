"""Stage 1 on the learning benchmarks' corpus: which LaWM settings make z carry the action.

Side by side, on the same store version and the same held-out episodes (`benchmarks.corpus`:
9 Meta-World tasks x 30 scripted robot episodes of >= 2 s, and a human stand-in whose true
actions are kept aside for evaluation only):

  levers     each a LaWM config change (`LEVERS`), trained with --seeds training seeds for
             --steps steps, one torch thread each; a finished run is cached (its folder under
             data/bench-corpus/runs/lam and its JSON under benchmarks/results/lam-runs, both
             named <lever>-s<seed>-<steps>, + -<runtime>-<precision> when the corpus's encoder
             numerics are not torch fp32: --runtime / --precision)
  metrics    `model.lam_eval.corpus_metrics`, one yardstick for every run: forward / copy,
             z explains, shuffle increases, ridge probe z -> action chunk (5 steps at 10 Hz)
             beside PCA-32 of f_t, on held-out robot episodes (per task too) and held-out
             human-stand-in clips (probe fitted on the training human clips; `transfer` =
             the robot-fitted probe)
  --speed    also the training loader alone vs the trainer, and labelling on Ray vs a plain
             torch loop of the IDM (the budgets of the README's stage-1 table)

Prints one table (mean ± std over seeds; --report: of every numerics cached, side by side)
and writes benchmarks/results/lam.json.
Usage: python -m benchmarks.bench_lam [--levers base,action-head] [--seeds 0,1,2] [--steps 800]
                                      [--runtime auto --precision auto]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.corpus import REPO, WORK, Corpus, add_numerics_args, bench_corpus  # noqa: E402
from model.data import PairDataset, pair_loader  # noqa: E402
from model.labeler import IdmLabeler  # noqa: E402
from model.lam_eval import Yardstick, corpus_metrics, headline  # noqa: E402
from model.train_lam import load_lawm, train_lam  # noqa: E402
from pipeline.store import FeatureStore, StoreWriter  # noqa: E402
from pipeline.store.pairs import PairQuery, k_frames_for  # noqa: E402
from schemas.identity import SamplingParams  # noqa: E402
from schemas.records import EpisodeRef  # noqa: E402
from schemas.training import LamConfig, load_lam_config  # noqa: E402

HELDOUT = 0.2  # ~54 robot episodes (6 per task) and ~8 human clips held out
YARDSTICK = Yardstick(horizon=5, action_rate=10.0, heldout_fraction=HELDOUT)
LABEL_COPIES = 30

# The LaWM the levers are measured against: configs/lam.yaml with the fields issue #15 moved
# set back to what they were, so a lever's name (and its cached runs) keeps its meaning when
# a winner becomes the default.
REFERENCE: dict = {"model": {"action_weight": 0.0, "idm_noise": 0.05, "idm_token_drop": 0.0}}
# Each lever: changes to REFERENCE (model / pairs fields) and the store's token mode.
LEVERS: dict[str, dict] = {
    "base": {},
    "idm-aug": {"model": {"idm_noise": 0.3, "idm_token_drop": 0.25}},
    "fdm-aug": {"model": {"fdm_noise": 0.3, "fdm_token_drop": 0.25}},
    "fdm-aug-strong": {"model": {"fdm_noise": 0.5, "fdm_token_drop": 0.5}},
    "grid8x8": {"tokens": "grid:8x8"},
    "idm-3frames": {"model": {"idm_frames": 3}},
    "idm-5frames": {"model": {"idm_frames": 5}},
    "k0.25": {"pairs": {"k_seconds": 0.25}},
    "k1.0": {"pairs": {"k_seconds": 1.0}},
    "action-head": {"model": {"action_weight": 1.0}},
    "action-head-10%": {"model": {"action_weight": 1.0, "action_fraction": 0.1}},
    # the human clips' value in stage 1: the default's lever trained on the robot episodes alone
    "action-head-robot-only": {"model": {"action_weight": 1.0}, "pairs": {"kinds": ["robot"]}},
    "fdm-instruction": {"model": {"fdm_instruction": True}},
}


def lever_config(base: LamConfig, lever: dict, seed: int, steps: int | None) -> LamConfig:
    pairs = base.pairs.model_copy(update={"heldout_fraction": HELDOUT, **lever.get("pairs", {})})
    model = base.model.model_copy(update={**REFERENCE["model"], **lever.get("model", {})})
    optim = base.optim.model_copy(update={"seed": seed, "eval_every": 0, "checkpoint_every": 0,
                                          **({"steps": steps} if steps else {})})
    return LamConfig.model_validate({"pairs": pairs.model_dump(), "model": model.model_dump(),
                                     "optim": optim.model_dump()})


def run_lever(name: str, lever: dict, seed: int, base: LamConfig, steps: int | None, corpora: dict[str, Corpus],
              results_dir: Path) -> dict | None:
    """Train (or reuse) one lever at one seed on the corpus's numerics and score it; cached as JSON."""
    cfg = lever_config(base, lever, seed, steps)
    tokens = lever.get("tokens", "grid:4x4")
    corpus = corpora[tokens]
    run = f"{name}-s{seed}-{cfg.optim.steps}{corpus.numerics}"
    cached = results_dir / f"{run}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    out = WORK / "runs" / "lam" / run
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{run}.lock", "w") as lock:
        try:  # several benchmark processes share the work: a run another one trains is skipped
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[{run}] being trained by another process: skipped")
            return None
        if cached.exists():
            return json.loads(cached.read_text())
        if not (out / "card.json").exists():
            shutil.rmtree(out, ignore_errors=True)
            train_lam(corpus.store, out, cfg)
        return _score(name, seed, tokens, corpus, out, cfg, cached)


def _score(name: str, seed: int, tokens: str, corpus: Corpus, out: Path, cfg: LamConfig, cached: Path) -> dict:
    model, card = load_lawm(out)
    t = time.perf_counter()
    store = FeatureStore.open(corpus.store, card.store.version)
    metrics = corpus_metrics(model, store, cfg.pairs.k_seconds, ys=YARDSTICK, truth=corpus.human_truth())
    result = {"lever": name, "seed": seed, "steps": card.steps, "tokens": tokens, "numerics": corpus.numerics,
              "lam_dir": str(out),
              "train_wall_s": card.wall_time_s, "eval_wall_s": time.perf_counter() - t,
              "params": sum(p.numel() for p in model.parameters()), "config": card.config,
              "headline": headline(metrics), "metrics": metrics}
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result, indent=2, default=float))
    return result


# What follows a run's name in its cached JSON's: nothing (torch fp32) or its numerics.
NUMERICS_SUFFIX = re.compile(r"(-[a-z]+-(fp32|bf16))?")


def cached_runs(results: Path, run: str) -> list[Path]:
    """The cached JSONs of `run` in every encoder numerics, torch fp32's first (run.json,
    run-openvino-bf16.json, ...)."""
    found = [p for p in results.glob(f"{run}*.json") if NUMERICS_SUFFIX.fullmatch(p.stem[len(run):])]
    return sorted(found, key=lambda p: (p.stem != run, p.name))


def row_name(run: dict) -> str:
    """A run's row: its lever, and its numerics unless torch fp32 (runs cached before runtimes
    were named have none)."""
    return run["lever"] + run.get("numerics", "")


def summarize(runs: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """lever[-numerics] -> headline metric -> (mean, std, seeds)."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(row_name(r), []).append(r["headline"])
    out = {}
    for lever, heads in by.items():
        keys = sorted(set().union(*heads))
        out[lever] = {k: (float(np.mean(v := [h[k] for h in heads if k in h])), float(np.std(v)), len(v))
                      for k in keys}
    return out


COLUMNS = (("robot_probe_r2_z", "probe z"), ("robot_probe_r2_pca", "PCA-32"), ("robot_forward_over_copy", "fwd/copy"),
           ("robot_z_explains", "z expl."), ("robot_shuffle_batch_increase", "shuf set"),
           ("robot_shuffle_episode_increase", "shuf ep"), ("human_probe_r2_z", "human z"),
           ("human_probe_r2_pca", "human PCA"), ("human_transfer_r2_z", "transfer"),
           ("human_forward_over_copy", "h fwd/copy"))


def print_table(summary: dict, markdown: bool = False) -> None:
    if markdown:  # the README's form: mean ± std over seeds
        print("| lever[-numerics] | seeds | " + " | ".join(label for _, label in COLUMNS) + " |")
        print("|---" * (len(COLUMNS) + 2) + "|")
        for lever, m in summary.items():
            n = max((v[2] for v in m.values()), default=0)
            cells = [(f"{m[k][0]:.3f} ± {m[k][1]:.3f}" if m[k][2] > 1 else f"{m[k][0]:.3f}") if k in m else "-"
                     for k, _ in COLUMNS]
            print(f"| {lever} | {n} | " + " | ".join(cells) + " |")
        return
    width = max((len(lever) for lever in summary), default=5) + 2
    print(f"{'lever':<{width}}{'n':>3}" + "".join(f"{label:>16}" for _, label in COLUMNS))
    for lever, m in summary.items():
        n = max((v[2] for v in m.values()), default=0)
        cells = "".join(f"{m[k][0]:>9.3f} ±{m[k][1]:.3f}" if k in m else f"{'-':>16}" for k, _ in COLUMNS)
        print(f"{lever:<{width}}{n:>3}{cells}")


def print_tasks(run: dict) -> None:
    tasks = run["metrics"].get("tasks", {})
    print(f"per task, {row_name(run)} seed {run['seed']}:")
    print(f"{'task':<44}{'probe z':>9}{'PCA':>8}{'fwd/copy':>10}{'z expl.':>9}")
    for task, m in tasks.items():
        print(f"{task[:43]:<44}{m.get('probe_r2_z', float('nan')):>9.3f}{m.get('probe_r2_pca', float('nan')):>8.3f}"
              f"{m['forward_over_copy']:>10.3f}{m['z_explains']:>9.3f}")


# --- speed: loader vs trainer, labelling vs a plain loop ----------------------------------------


def loader_pairs_per_s(uri: str, version: str, cfg: LamConfig, seconds: float = 5.0) -> float:
    ds = PairDataset(FeatureStore.open(uri, version), PairQuery.from_config(cfg.pairs, split="train"),
                     cfg.optim.batch_size)
    it = iter(pair_loader(ds, workers=cfg.optim.loader_workers))
    next(it)  # warm: index, first windows
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        n += len(next(it)["t"])
    return n / (time.perf_counter() - t)


def plain_idm_loop(uri: str, lam_dir: Path, batch: int = 1024) -> tuple[float, int]:
    """The floor the labelling job is judged against: every episode's pairs in memory, one
    torch loop of the IDM, nothing else."""
    model, card = load_lawm(lam_dir)
    store = FeatureStore.open(uri)
    a, b = [], []
    for row in range(len(store)):
        f = store.features(row)
        k = int(k_frames_for(store.fps[row], card.k_seconds))
        a.append(f[:-k])
        b.append(f[k:])
    f_t, f_tk = torch.from_numpy(np.concatenate(a)), torch.from_numpy(np.concatenate(b))
    with torch.inference_mode():
        model.encode(f_t[:batch], f_tk[:batch])  # warm-up
        t = time.perf_counter()
        for s in range(0, len(f_t), batch):
            model.encode(f_t[s : s + batch], f_tk[s : s + batch])
    return len(f_t) / (time.perf_counter() - t), len(f_t)


def replicated_store(uri: str, out: str, copies: int) -> str:
    """The same episodes `copies` times under new keys, same encoder: a labelling workload big
    enough that actor start-up and the commit are small beside the inference."""
    if Path(out).exists():
        return out
    src = FeatureStore.open(uri)
    with StoreWriter.open(out, encoder=src.encoder) as w:
        for c in range(copies):
            for row in range(len(src)):
                ep = src.episode(row)
                ref = EpisodeRef(source="copy", episode_id=f"{c:03d}-{row:05d}", kind=ep.kind, uri=ep.key,
                                 content_hash=f"{c}-{ep.key}")
                w.start_episode(ref, SamplingParams(fps=ep.fps, size=src.encoder.image_size))
                w.append_frames(ref, ep.features, ep.timestamps)
                w.finish_episode(ref, ep.actions, fps=ep.fps)
        w.commit(f"{copies} copies of {uri}")
    return out


def speed(corpus: Corpus, run: dict) -> dict:
    from pipeline.ingest import ensure_ray
    from pipeline.label import label_store

    uri = corpus.store
    cfg = LamConfig.model_validate(run["config"])
    lam_dir = Path(run["lam_dir"])
    card = load_lawm(lam_dir)[1]
    train_pps = card.pairs_per_s
    loader_pps = loader_pairs_per_s(uri, card.store.version, cfg)
    print(f"loader alone {loader_pps:.0f} pairs/s vs the trainer {train_pps:.0f} ({loader_pps / train_pps:.1f}x)")
    ensure_ray()  # started before timing, like the ingest benchmark
    big = replicated_store(uri, str(WORK / f"store-x{LABEL_COPIES}{corpus.numerics}"), LABEL_COPIES)
    report = label_store(big, IdmLabeler(str(lam_dir)), progress=False)
    plain_pps, _ = plain_idm_loop(big, lam_dir)
    print(f"labelling {report.pairs} pairs: {report.pairs_per_s:.0f} pairs/s on Ray vs a plain torch loop "
          f"{plain_pps:.0f} ({report.pairs_per_s / plain_pps:.2f}x)")
    return {"train_pairs_per_s": train_pps, "loader_pairs_per_s": loader_pps, "loader_vs_train": loader_pps / train_pps,
            "label_pairs": report.pairs, "label_pairs_per_s": report.pairs_per_s, "plain_idm_pairs_per_s": plain_pps,
            "label_vs_plain": report.pairs_per_s / plain_pps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levers", default="base", help=f"comma-separated, of: {', '.join(LEVERS)}")
    p.add_argument("--combine", action="append", default=[],
                   help="NAME=LEVER+LEVER...: a lever made of others' changes (later ones win), e.g. "
                        "best=action-head+idm-3frames")
    p.add_argument("--seeds", default="0", help="training seeds")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    p.add_argument("--config", default=str(REPO / "configs" / "lam.yaml"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--speed", action="store_true", help="also loader and labelling throughput (first lever)")
    p.add_argument("--report", action="store_true",
                   help="train nothing: the table of the runs already cached, of every encoder numerics")
    add_numerics_args(p)
    p.add_argument("--no-refresh", action="store_true",
                   help="take the corpus's stores as they stand (no render, no ingest): the cached runs' features")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (the README's form)")
    p.add_argument("--tasks", action="store_true", help="print the per-task table of each lever's first seed")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "lam-runs"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lam.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    levers = dict(LEVERS)
    for spec in args.combine:
        name, parts = spec.split("=", 1)
        merged: dict = {}
        for part in parts.split("+"):
            for section, changes in LEVERS[part].items():
                merged[section] = changes if section == "tokens" else {**merged.get(section, {}), **changes}
        levers[name] = merged
    names = args.levers.split(",")
    unknown = [n for n in names if n not in levers]
    if unknown:
        p.error(f"unknown levers {unknown}; known: {', '.join(levers)}")
    base = load_lam_config(args.config)
    t = time.perf_counter()
    modes = {levers[n].get("tokens", "grid:4x4") for n in names}
    corpora = {} if args.report else {mode: bench_corpus(mode, runtime=args.runtime, precision=args.precision,
                                                         refresh=not args.no_refresh) for mode in modes}
    print(f"corpus ready in {time.perf_counter() - t:.0f} s")
    runs = []
    for name in names:
        for seed in [int(s) for s in args.seeds.split(",")]:
            t = time.perf_counter()
            if args.report:  # only what is cached, in every numerics
                run = f"{name}-s{seed}-{lever_config(base, levers[name], seed, args.steps).optim.steps}"
                found = [json.loads(path.read_text()) for path in cached_runs(Path(args.results), run)]
            else:
                found = [r for r in [run_lever(name, levers[name], seed, base, args.steps, corpora,
                                               Path(args.results))] if r is not None]
            for r in found:
                h = {k: float("nan") for k, _ in COLUMNS} | r["headline"]
                print(f"[{row_name(r)} s{seed}] {time.perf_counter() - t:.0f} s: probe z {h['robot_probe_r2_z']:.3f} "
                      f"vs PCA {h['robot_probe_r2_pca']:.3f}, fwd/copy {h['robot_forward_over_copy']:.3f}, z explains "
                      f"{h['robot_z_explains']:.2f}; human z {h['human_probe_r2_z']:.3f}", flush=True)
                runs.append(r)
    summary = summarize(runs)
    print_table(summary, markdown=args.markdown)
    if args.tasks:
        seen = set()
        for r in runs:
            if row_name(r) not in seen:
                seen.add(row_name(r))
                print_tasks(r)
    results = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}, "params": vars(args),
               "summary": summary, "runs": runs}
    if args.speed and not args.report:
        results["speed"] = speed(corpora["grid:4x4"], runs[0])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=float))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
