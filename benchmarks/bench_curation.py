"""Curation on a polluted corpus: does it find what was injected, does training gain, what does it cost.

Side by side, in one run:

  corpus     the rendered Meta-World samples (5 tasks x N robot episodes, the human stand-in),
             polluted by `pipeline.samples.polluted` (idle heads and tails, a static clip, exact
             and near duplicates, unrelated clips) and ingested with the default encoder, beside
             a clean robot source of other layouts (another seed) that no training run sees
  accuracy   `lawam curate` (fresh process, default config) scored against the truth: precision
             and recall per pathology (frames for still spans, copy/original pairs for duplicates)
  training   the same LaWM (configs/lam.yaml, same steps and seed) trained on the polluted
             sources without the curation set, with it, and with each half of it (still spans
             only, duplicates only); all evaluated on the clean source's episodes: forward
             error (vs copying f_t) and the ridge probe z -> action chunk
  cost       curating the store in a fresh process vs ingesting it; curating a synthetic store
             of --synthetic episodes (features only, written through the real writer): wall
             time and peak memory of the curating process

Prints tables and writes benchmarks/results/curation.json. Figures are comparable only within
one run (the machine may be shared): the load average is printed beside them.
Usage: python -m benchmarks.bench_curation [--episodes 8] [--steps 600] [--synthetic 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("MUJOCO_GL", "egl")

REPO = Path(__file__).resolve().parents[1]
TASKS = ("reach-v3", "push-v3", "drawer-open-v3", "button-press-topdown-v3", "door-open-v3")


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def build_corpus(work: Path, episodes: int, human_episodes: int, clean_episodes: int):
    from pipeline.samples import make_samples, sample_sources
    from pipeline.samples.polluted import TRUTH_FILE, make_polluted, read_polluted

    t = time.perf_counter()
    make_samples(work / "samples", tasks=TASKS, episodes_per_task=episodes, human_episodes_per_task=human_episodes,
                 seed=0, image_size=128, progress=True)
    make_samples(work / "clean-samples", tasks=TASKS, episodes_per_task=clean_episodes, human_tasks=(), seed=1,
                 image_size=128, progress=True)
    print(f"samples          {time.perf_counter() - t:8.1f} s (cached after the first run)")
    polluted = work / "polluted"
    corpus = read_polluted(polluted) if (polluted / TRUTH_FILE).is_file() else make_polluted(work / "samples", polluted)
    clean = next(s for s in sample_sources(work / "clean-samples") if s.kind == "robot")
    return corpus, clean.model_copy(update={"id": "clean", "fps": None})


def ingest(work: Path, sources) -> tuple[str, float]:
    from pipeline.ingest import ingest_corpus
    from schemas import CorpusConfig, SamplingConfig, StoreConfig

    store = work / "store"
    cfg = CorpusConfig(name="bench-curation", sources=sources, sampling=SamplingConfig(fps=10),
                       store=StoreConfig(uri=str(store)))
    seconds_file = work / "ingest_seconds.json"
    report = ingest_corpus(cfg, progress=True)
    if report.added:
        seconds_file.write_text(json.dumps({"seconds": report.seconds, "episodes": report.added,
                                            "frames": report.frames}))
    first = json.loads(seconds_file.read_text())
    print(f"ingest           {first['seconds']:8.1f} s for {first['episodes']} episodes, {first['frames']} frames "
          f"(first run; load {load()})")
    return str(store), float(first["seconds"])


def fresh_curate(uri: str, config: Path | None = None) -> tuple[float, int, str]:
    """`lawam curate` in a new process: (wall seconds, peak RSS in MB, last output line)."""
    cmd = [sys.executable, "-c", "import resource, runpy, sys; sys.argv = ['lawam'] + sys.argv[1:];"
           "\ntry: runpy.run_module('flows.cli', run_name='__main__')\nfinally: print('peak_rss_kb', "
           "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)",
           "curate", "--store", uri, "--no-progress", *(["--config", str(config)] if config else [])]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"lawam curate failed ({proc.returncode}): {proc.stderr[-2000:]}")
    peak = next(int(ln.split()[1]) for ln in proc.stderr.splitlines() if ln.startswith("peak_rss_kb"))
    return seconds, peak // 1024, proc.stdout.strip().splitlines()[-1]


def accuracy(uri: str, corpus) -> list[dict]:
    from pipeline.samples.polluted import score_curation
    from pipeline.store import FeatureStore
    from pipeline.store.curation import list_curation_sets

    store = FeatureStore.open(uri)
    (cset,) = list_curation_sets(store)
    rows = score_curation(store, cset, corpus.truth)
    print(f"\n{'pathology':12s} {'unit':8s} {'truth':>6s} {'found':>6s} {'precision':>9s} {'recall':>7s}")
    for r in rows:
        p = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        rec = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        print(f"{r['pathology']:12s} {r['unit']:8s} {r['truth']:6d} {r['tp']:6d} {p:>9s} {rec:>7s}")
    return rows


def training(uri: str, work: Path, set_id: str, steps: int) -> dict:
    import torch

    from model.data import collect
    from model.metrics import lawm_metrics
    from model.train_lam import load_lawm, train_lam
    from pipeline.progress import progress_bar
    from pipeline.store import FeatureStore
    from pipeline.store.pairs import PairQuery, PairReader
    from schemas.training import load_lam_config

    base = load_lam_config(REPO / "configs" / "lam.yaml")
    base = base.model_copy(update={"optim": base.optim.model_copy(update={"steps": steps, "eval_every": 0,
                                                                          "checkpoint_every": 0})})
    store = FeatureStore.open(uri)
    p = base.pairs
    clean = {"k_seconds": p.k_seconds, "horizon": p.horizon, "action_rate": p.action_rate, "sources": ("clean",),
             "heldout_fraction": 0.5}
    heldout = collect(store, PairQuery(**clean, split="heldout"))
    probe_train = collect(store, PairQuery(**clean, split="train"))
    out, nan = {}, float("nan")
    variants = (("uncurated", None, True, True), ("curated", set_id, True, True),
                ("spans only", set_id, True, False), ("dedup only", set_id, False, True))
    for name, curation, drop_idle, dedup in variants:
        pairs = base.pairs.model_copy(update={"sources": ["robot", "human", "scraped"], "heldout_fraction": 0.0,
                                              "curation": curation, "drop_idle": drop_idle, "dedup": dedup})
        cfg = base.model_copy(update={"pairs": pairs})
        run_dir = work / f"lam-{name.replace(' ', '-')}"
        shutil.rmtree(run_dir, ignore_errors=True)
        torch.set_num_threads(os.cpu_count() or 1)
        card = train_lam(uri, run_dir, cfg, progress=progress_bar)
        model, _ = load_lawm(run_dir)
        m = lawm_metrics(model, heldout, probe_train)
        seen = len(PairReader(store, PairQuery.from_config(cfg.pairs, split="train")))
        out[name] = {"pairs_per_epoch": seen, "wall_s": card.wall_time_s, **m}
        print(f"[{name:10s}] {seen} training pairs/epoch, {steps} steps in {card.wall_time_s:.0f} s; clean held-out: "
              f"forward {m['forward_mse']:.4f} vs copy {m['copy_mse']:.4f} ({m['forward_over_copy']:.3f}x), "
              f"probe R^2 z {m.get('probe_r2_z', nan):.3f} (PCA-32 of f_t {m.get('probe_r2_pca', nan):.3f})")
    return out


def scratch_copy(uri: str | Path, dest: Path) -> str:
    """A copy of the store to curate from scratch (the original keeps no curation set)."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(uri, dest)
    return str(dest)


def synthetic(work: Path, n: int) -> dict:
    """A store of `n` synthetic episodes written through the real writer (tests/stores.py's
    episodes: features a random linear map of a moving 2-d position), curated in a fresh process."""
    sys.path.insert(0, str(REPO))
    from tests.stores import SynthSource, write_store

    uri = work / f"synthetic-{n}"
    t = time.perf_counter()
    if not (uri / "repo").exists():
        # ten sources: each episode's number is written into its features as float16 (max 65504)
        per = -(-n // 10)
        write_store(str(uri), [SynthSource(f"synth{s}", kind="human", fps=5.0, episodes=min(per, n - s * per),
                                           seconds=4.0) for s in range(10) if n > s * per], chunk_frames=4096)
    built = time.perf_counter() - t
    seconds, peak_mb, line = fresh_curate(scratch_copy(uri, work / f"synthetic-{n}-curated"))
    print(f"synthetic        {n} episodes x 20 frames: built in {built:.0f} s; curated in {seconds:.1f} s "
          f"(fresh process), peak RSS {peak_mb} MB (load {load()})\n                 {line}")
    return {"episodes": n, "frames": n * 20, "build_s": built, "curate_s": seconds, "peak_rss_mb": peak_mb}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=8, help="robot episodes per task (5 tasks) to pollute")
    p.add_argument("--human-episodes", type=int, default=4, help="human stand-in episodes per task (2 tasks)")
    p.add_argument("--clean-episodes", type=int, default=4, help="clean evaluation episodes per task (another seed)")
    p.add_argument("--steps", type=int, default=600, help="LaWM training steps, each run")
    p.add_argument("--synthetic", type=int, default=100_000, help="episodes of the synthetic store (0: skip)")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--synthetic-only", action="store_true", help="only the synthetic store's cost")
    p.add_argument("--work", default=str(REPO / "data" / "bench-curation"), help="samples, corpus, stores (cached)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "curation.json"))
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": {"cpus": os.cpu_count()}, "params": vars(args), "load_start": load()}

    if args.synthetic_only:
        results["synthetic"] = synthetic(work, args.synthetic)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).with_name("curation-synthetic.json").write_text(json.dumps(results, indent=2, default=float))
        return
    corpus, clean = build_corpus(work, args.episodes, args.human_episodes, args.clean_episodes)
    uri, ingest_s = ingest(work, [*corpus.sources, clean])
    fresh = scratch_copy(uri, work / "store-curated")
    seconds, peak_mb, line = fresh_curate(fresh)
    print(f"curate           {seconds:8.1f} s in a fresh process = {seconds / ingest_s:.1%} of the ingest "
          f"(budget 10%); peak RSS {peak_mb} MB (load {load()})\n                 {line}")
    results["cost"] = {"ingest_s": ingest_s, "curate_s": seconds, "ratio": seconds / ingest_s, "peak_rss_mb": peak_mb}
    results["accuracy"] = accuracy(fresh, corpus)

    if not args.skip_training:
        from pipeline.store import FeatureStore
        from pipeline.store.curation import list_curation_sets

        (cset,) = list_curation_sets(FeatureStore.open(fresh))
        results["training"] = training(fresh, work, cset.id, args.steps)
    if args.synthetic:
        results["synthetic"] = synthetic(work, args.synthetic)
    results["load_end"] = load()
    results["peak_rss_mb_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=float))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
