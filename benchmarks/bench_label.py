"""Labelling against a plain torch loop of the IDM, on a synthetic store (no rendering).

Side by side, in one run, on the same store and LaWM:

  store        `--episodes` robot episodes of `--frames` frames at 10 fps, random float16
               features of the default encoder's shape (16 tokens x 384), written through
               the real writer (cached under --work)
  LaWM         the default LaWM trained for `--steps` steps (its speed, not its quality,
               is what labelling depends on)
  label_store  on Ray (actors, one commit) and in-process (`use_ray=False`), start-up,
               reads and commit counted, each into a fresh copy of the store
  plain loop   `benchmarks.bench_lam.plain_idm_loop`: every pair in memory, one torch loop
  IDM numerics the IDM in fp32 and in bf16 autocast on the CPU: pairs/s and the largest
               difference of z (the labeler keeps fp32 unless bf16 wins, see the README)

Prints ratios and writes benchmarks/results/label.json.
Usage: python -m benchmarks.bench_label [--episodes 2000] [--frames 30] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_lam import plain_idm_loop  # noqa: E402
from model.labeler import IdmLabeler  # noqa: E402
from model.train_lam import load_lawm, train_lam  # noqa: E402
from pipeline.ingest import ensure_ray  # noqa: E402
from pipeline.label import label_store  # noqa: E402
from pipeline.store import FeatureStore, StoreWriter  # noqa: E402
from schemas.identity import EncoderIdentity, SamplingParams, random_init_weights  # noqa: E402
from schemas.records import ActionTrack, EpisodeRef  # noqa: E402
from schemas.training import LamConfig, with_steps  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENCODER = EncoderIdentity(model="synthetic", weights=random_init_weights(0), image_size=112, mean=(0.5,) * 3,
                          std=(0.5,) * 3, tokens="grid:4x4", layer=-1)


def synthetic_store(uri: str, episodes: int, frames: int, fps: float = 10.0) -> str:
    if Path(uri).exists():
        return uri
    rng = np.random.default_rng(0)
    with StoreWriter.open(uri, encoder=ENCODER) as w:
        for i in range(episodes):
            ref = EpisodeRef(source="synth", episode_id=f"ep{i:05d}", kind="robot", uri=f"/synth/{i}",
                             content_hash=f"synth-{i}")
            f = rng.normal(size=(frames, 16, 384)).astype(np.float16)
            ts = np.arange(frames) / fps
            w.start_episode(ref, SamplingParams(fps=fps, size=112))
            w.append_frames(ref, f, ts)
            w.finish_episode(ref, ActionTrack(ts, rng.normal(size=(frames, 4)).astype(np.float32)), fps=fps)
        w.commit(f"{episodes} synthetic episodes")
    return uri


def idm_numerics(lam_dir: Path, uri: str, batch: int = 1024, n: int = 8192) -> dict:
    """The IDM alone in fp32 and in bf16 autocast on the CPU, on the same pairs."""
    model, card = load_lawm(lam_dir)
    store = FeatureStore.open(uri)
    f = np.concatenate([store.features(r) for r in range(min(len(store), 1 + n // int(store.frames[0])))])[: n + 5]
    a, b = torch.from_numpy(f[:-5]), torch.from_numpy(f[5:])
    out = {}
    for name, on in (("fp32", False), ("bf16", True)):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
            z = model.encode(a[:batch], b[:batch]).mu.float()
            t = time.perf_counter()
            for s in range(0, len(a), batch):
                model.encode(a[s : s + batch], b[s : s + batch])
            out[name] = {"pairs_per_s": len(a) / (time.perf_counter() - t), "z": z}
    dz = float((out["bf16"]["z"] - out["fp32"]["z"]).abs().max())
    scale = float(out["fp32"]["z"].abs().mean())
    return {"fp32_pairs_per_s": out["fp32"]["pairs_per_s"], "bf16_pairs_per_s": out["bf16"]["pairs_per_s"],
            "max_abs_dz": dz, "mean_abs_z": scale}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2, help="label runs per path, alternating")
    ap.add_argument("--work", default=str(REPO / "data" / "bench-label"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "label.json"))
    args = ap.parse_args()
    work = Path(args.work)
    uri = synthetic_store(str(work / f"store-{args.episodes}x{args.frames}"), args.episodes, args.frames)
    lam = work / "lam"
    if not (lam / "card.json").exists():
        cfg = with_steps(LamConfig(), args.steps)
        cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"eval_every": 0, "checkpoint_every": 0})})
        train_lam(uri, lam, cfg)
    ensure_ray()  # started before timing, like the ingest benchmark
    runs: dict[str, list[float]] = {"ray": [], "local": [], "plain": []}
    pairs = 0
    for r in range(args.repeat):
        for name in ("ray", "local"):
            copy = work / f"copy-{name}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(uri, copy)
            report = label_store(str(copy), IdmLabeler(str(lam)), use_ray=name == "ray", progress=False)
            runs[name].append(report.pairs_per_s)
            pairs = report.pairs
        plain, _ = plain_idm_loop(uri, lam)
        runs["plain"].append(plain)
        print(f"round {r + 1}: label_store on Ray {runs['ray'][-1]:.0f} pairs/s, in-process {runs['local'][-1]:.0f}, "
              f"plain torch loop {plain:.0f} ({pairs} pairs)", flush=True)
    ratio = {k: float(np.median(np.asarray(runs[k]) / np.asarray(runs["plain"]))) for k in ("ray", "local")}
    numerics = idm_numerics(lam, uri)
    print(f"labelling vs the plain loop (median of per-round ratios): Ray {ratio['ray']:.2f}x, "
          f"in-process {ratio['local']:.2f}x")
    print(f"IDM alone: fp32 {numerics['fp32_pairs_per_s']:.0f} pairs/s, bf16 autocast "
          f"{numerics['bf16_pairs_per_s']:.0f} ({numerics['bf16_pairs_per_s'] / numerics['fp32_pairs_per_s']:.2f}x), "
          f"max |dz| {numerics['max_abs_dz']:.4f} (mean |z| {numerics['mean_abs_z']:.3f}); "
          f"load average {os.getloadavg()[0]:.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "load_average_end": os.getloadavg()},
                                          "params": vars(args), "pairs": pairs, "pairs_per_s": runs,
                                          "vs_plain": ratio, "idm": numerics}, indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
