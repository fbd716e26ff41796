"""Stage 1 end to end on a Meta-World sample corpus: LaWM quality, loader and labelling speed.

Side by side, in one run, on the same store:

  corpus         5 tasks x N scripted-expert robot episodes + the human stand-in, rendered
                 (cached under --work) and ingested with the default encoder
  LaWM           `train_lam` with configs/lam.yaml defaults (or --steps); held-out metrics
                 from its card: forward error vs copying f_t, z = 0, shuffled z, the ridge
                 probe z -> action chunk beside the PCA-32-of-f_t control, code usage (vq)
  loader         the training DataLoader alone (same query and batch size), pairs/s, beside
                 the trainer's pairs/s (budget: loader >= 10x)
  labelling      `label_store` on Ray (actors, one commit) over the corpus, and over 30 copies
                 of it (so start-up is small beside the work) beside a plain torch loop of the
                 same IDM over the same features held in memory (budget: >= 0.8x)

Prints a table and writes benchmarks/results/lam.json.
Usage: python -m benchmarks.bench_lam [--episodes 20] [--steps 2000] [--bottleneck vae|vq|both]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.data import PairDataset, pair_loader  # noqa: E402
from model.labeler import IdmLabeler  # noqa: E402
from model.train_lam import load_lawm, train_lam  # noqa: E402
from pipeline.ingest import ensure_ray, ingest_corpus  # noqa: E402
from pipeline.label import label_store  # noqa: E402
from pipeline.progress import progress_bar  # noqa: E402
from pipeline.samples import make_samples, sample_sources  # noqa: E402
from pipeline.store import FeatureStore, StoreWriter  # noqa: E402
from pipeline.store.pairs import PairQuery, k_frames_for  # noqa: E402
from schemas import CorpusConfig, StoreConfig  # noqa: E402
from schemas.identity import SamplingParams  # noqa: E402
from schemas.records import EpisodeRef  # noqa: E402
from schemas.training import LamConfig, load_lam_config  # noqa: E402

TASKS = ("reach-v3", "push-v3", "drawer-open-v3", "button-press-topdown-v3", "door-open-v3")
REPO = Path(__file__).resolve().parents[1]
LABEL_COPIES = 30


def corpus(work: Path, episodes: int, human_episodes: int, robot_fps: float = 10.0) -> str:
    samples = work / "samples"
    t = time.perf_counter()
    make_samples(samples, tasks=TASKS, episodes_per_task=episodes, human_episodes_per_task=human_episodes,
                 seed=0, image_size=128, progress=True)
    print(f"samples           {time.perf_counter() - t:8.1f} s (cached after the first run)")
    sources = [s.model_copy(update={"fps": robot_fps}) if s.kind == "robot" else s for s in sample_sources(samples)]
    store = work / ("store" if robot_fps == 10.0 else f"store-{robot_fps:g}fps")
    cfg = CorpusConfig(name="bench-lam", sources=sources, store=StoreConfig(uri=str(store)))
    report = ingest_corpus(cfg, progress=True)
    print(f"ingest            {report.seconds:8.1f} s, +{report.added} episodes ({report.skipped} already in)")
    return cfg.store.uri


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


def run_one(uri: str, work: Path, cfg: LamConfig, name: str) -> dict:
    out = work / f"lam-{name}"
    shutil.rmtree(out, ignore_errors=True)
    torch.set_num_threads(os.cpu_count() or 1)
    card = train_lam(uri, out, cfg, progress=progress_bar)
    m = card.metrics
    train_pps = card.pairs_per_s
    loader_pps = loader_pairs_per_s(uri, card.store.version, cfg)
    print(f"[{name}] trained {card.steps} steps in {card.wall_time_s:.0f} s: {train_pps:.0f} pairs/s; "
          f"loader alone {loader_pps:.0f} pairs/s ({loader_pps / train_pps:.1f}x)")
    print(f"[{name}] held-out forward {m['forward_mse']:.4f} vs copy {m['copy_mse']:.4f} "
          f"({m['forward_over_copy']:.2f}x), z = 0 {m['zero_z_mse']:.4f}: z explains {100 * m['z_explains']:.0f}% "
          f"of the gain; shuffled z +{m['shuffle_batch_increase']:.4f} (batch), "
          f"+{m['shuffle_episode_increase']:.4f} (episode)")
    if "probe_r2_z" in m:
        print(f"[{name}] probe R^2 z -> action chunk {m['probe_r2_z']:.3f} vs PCA-32 of f_t {m['probe_r2_pca']:.3f} "
              f"({int(m['probe_pairs_train'])} train / {int(m['probe_pairs_heldout'])} held-out robot pairs)")
    if "code_usage" in m:
        print(f"[{name}] code usage {m['code_usage']:.2f}, perplexity {m['perplexity']:.1f}")

    ensure_ray()  # started before timing, like the ingest benchmark
    report = label_store(uri, IdmLabeler(str(out)), progress=False)
    big = replicated_store(uri, str(work / f"store-x{LABEL_COPIES}-{Path(uri).name}"), LABEL_COPIES)
    big_report = label_store(big, IdmLabeler(str(out)), progress=False)
    plain_pps, pairs = plain_idm_loop(big, out)
    print(f"[{name}] labelling the corpus: {report.pairs} pairs in {report.seconds:.1f} s (actor start and commit "
          f"included); {LABEL_COPIES} copies of it: {big_report.pairs_per_s:.0f} pairs/s on Ray ({big_report.pairs} "
          f"pairs, one commit) vs a plain torch loop {plain_pps:.0f} pairs/s "
          f"({big_report.pairs_per_s / plain_pps:.2f}x)")
    return {"card_metrics": m, "steps": card.steps, "train_wall_s": card.wall_time_s,
            "train_pairs_per_s": train_pps, "loader_pairs_per_s": loader_pps, "loader_vs_train": loader_pps / train_pps,
            "label_pairs_per_s": report.pairs_per_s, "label_seconds": report.seconds, "label_pairs": report.pairs,
            "label_big_pairs": big_report.pairs, "label_big_pairs_per_s": big_report.pairs_per_s,
            "plain_idm_pairs_per_s": plain_pps, "label_vs_plain": big_report.pairs_per_s / plain_pps,
            "label_set": card.label_set, "lam_dir": str(out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=20, help="robot episodes per task (5 tasks)")
    p.add_argument("--human-episodes", type=int, default=10, help="human stand-in episodes per task (2 tasks)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: configs/lam.yaml)")
    p.add_argument("--config", default=str(REPO / "configs" / "lam.yaml"))
    p.add_argument("--bottleneck", choices=("vae", "vq", "both"), default="vae")
    p.add_argument("--robot-fps", type=float, default=10.0, help="sampling rate of the robot source (video: 20 fps)")
    p.add_argument("--k-seconds", type=float, default=None, help="frame gap (default: the config's)")
    p.add_argument("--heldout-fraction", type=float, default=None, help="held-out episodes (default: the config's)")
    p.add_argument("--work", default=str(REPO / "data" / "bench-lam"), help="samples and store (kept: cached)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lam.json"))
    args = p.parse_args()
    work = Path(args.work)
    uri = corpus(work, args.episodes, args.human_episodes, args.robot_fps)
    store = FeatureStore.open(uri)
    base = load_lam_config(args.config)
    if args.steps:
        base = base.model_copy(update={"optim": base.optim.model_copy(update={"steps": args.steps})})
    pairs = {k: v for k, v in (("k_seconds", args.k_seconds), ("heldout_fraction", args.heldout_fraction))
             if v is not None}
    base = base.model_copy(update={"pairs": base.pairs.model_copy(update=pairs)})
    results = {"machine": {"cpus": os.cpu_count()}, "params": vars(args), "config": base.model_dump(mode="json"),
               "store_version": store.version,
               "episodes": len(store), "frames": int(store.frames.sum())}
    for name in (("vae", "vq") if args.bottleneck == "both" else (args.bottleneck,)):
        cfg = base.model_copy(update={"model": base.model.model_copy(update={"bottleneck": name})})
        results[name] = run_one(uri, work, cfg, f"{name}-{args.robot_fps:g}fps")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=float))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
