"""Training from stored features vs training from video: frames/s delivered to the trainer.

LeRobot users train from video: every batch decodes its frames and, for a model on frozen
features, runs the frozen encoder on them, per batch, every epoch. Here the frozen encoder ran
once, at ingest; a trainer reads (f_t, f_t+k) pairs from the store. Side by side, in one run,
over the same samples (every robot episode of one LeRobot v3.0 dataset, pairs k seconds
apart) with the same batch size, the same DataLoader worker count and the same torch threads:

  ours      `model.data.pair_loader` over the feature store (`PairDataset`, split "all")
  lerobot   lerobot's own `LeRobotDataset(delta_timestamps={camera: [0, k]})` in a torch
            DataLoader, then our `FrozenEncoder` (the very encoder the store was built with)
            on both frames of every pair, in the training process, as a training step would

Each side runs in a fresh process: ours in this environment, lerobot's in a throwaway venv
(lerobot pins its own torch; see benchmarks/lerobot_compat.py), built with

    python3 -m venv /tmp/lrv && /tmp/lrv/bin/pip install lerobot timm h5py google-crc32c webdataset braceexpand

(the last four only so that the lerobot side imports our encoder module), ~8 GB: delete it
when done. A "frame" is one frame delivered to the trainer as features: a pair is two.
Reported: frames/s once warm (after `--warmup` batches), the time to the first batch (worker
start, store open / video index), and the ratio ours / lerobot. Lerobot also yields the pairs
whose t + k runs past the episode's end (padded, `_is_pad`); ours only whole pairs: both
counts are the frames each delivered.

Usage (under `nice`, on a loaded machine only the ratio means anything):
    python -m benchmarks.bench_features_vs_video --lerobot-python /tmp/lrv/bin/python \\
        [--image-size 128] [--episodes-per-task 3] [--model vit_tiny_patch16_224] [--batch 64] [--workers 2]
Writes benchmarks/results/features_vs_video.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAMERA = "observation.images.corner"


def _encoder_cfg(args):
    from schemas import EncoderConfig

    return EncoderConfig(model=args.model, image_size=args.image_size, tokens=args.tokens, batch_size=2 * args.batch,
                         device="cpu")


def side_ours(args) -> dict:
    """Batches of stored feature pairs through `pair_loader`."""
    import torch

    from model.data import PairDataset, pair_loader
    from pipeline.store import FeatureStore
    from pipeline.store.pairs import PairQuery

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    store = FeatureStore.open(args.store)
    ds = PairDataset(store, PairQuery(k_seconds=args.k_seconds, split="all"), args.batch, epochs=None)
    batches = iter(pair_loader(ds, workers=args.workers))
    frames, first, t_warm, i = 0, None, t0, 0
    # At least `min_seconds` timed: these batches take milliseconds.
    while i < args.warmup + args.batches or time.perf_counter() - t_warm < args.min_seconds:
        if i == args.warmup:
            t_warm = time.perf_counter()
        batch = next(batches)
        if first is None:
            first = time.perf_counter() - t0
        if i >= args.warmup:
            frames += 2 * len(batch["t"])
        i += 1
    seconds = time.perf_counter() - t_warm
    return {"side": "ours", "frames": frames, "seconds": seconds, "frames_per_s": frames / seconds,
            "first_batch_s": first, "token_shape": list(store.token_shape)}


def side_lerobot(args) -> dict:
    """lerobot's dataset and DataLoader, decoding video; our frozen encoder on every frame."""
    import numpy as np
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from pipeline.encode import FrozenEncoder

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    encoder = FrozenEncoder(_encoder_cfg(args))
    backend, note = None, ""
    for name in ("torchcodec", "pyav"):
        ds = LeRobotDataset("lawam/metaworld_samples", root=args.robot, video_backend=name,
                            delta_timestamps={CAMERA: [0.0, args.k_seconds]})
        try:
            ds[0]
            backend = name
            break
        except Exception as exc:  # noqa: BLE001 - a backend that cannot decode here: the next is tried
            note = f"{name}: {type(exc).__name__}"
    if backend is None:
        raise RuntimeError(f"no lerobot video backend decodes {args.robot}: {note}")
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         generator=torch.Generator().manual_seed(0),
                                         persistent_workers=args.workers > 0)
    batches = iter(loader)
    frames, first, t_warm, shape = 0, None, t0, None
    waited = encoding = 0.0  # timed batches: waiting on the loader (decode), running the encoder
    for i in range(args.warmup + args.batches):
        if i == args.warmup:
            t_warm = time.perf_counter()
        t = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:  # an epoch is shorter than the run: the next epoch, as a trainer would
            batches = iter(loader)
            batch = next(batches)
        t_loaded = time.perf_counter()
        video = batch[CAMERA]  # (B, 2, 3, H, W) float in [0, 1]
        b = video.shape[0]
        pixels = (video.flatten(0, 1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        feats = encoder.encode(np.ascontiguousarray(pixels))  # (2B, T, D): f_t, f_t+k of each pair
        shape = list(feats.shape[1:])
        if first is None:
            first = time.perf_counter() - t0
        if i >= args.warmup:
            frames += 2 * b
            waited += t_loaded - t
            encoding += time.perf_counter() - t_loaded
    seconds = time.perf_counter() - t_warm
    import lerobot

    return {"side": "lerobot", "frames": frames, "seconds": seconds, "frames_per_s": frames / seconds,
            "first_batch_s": first, "token_shape": shape, "video_backend": backend, "loader_wait_s": waited,
            "encoder_s": encoding, "decode_only_frames_per_s": frames / waited if waited else None,
            "lerobot": lerobot.__version__, "torch": torch.__version__}


def prepare(args) -> tuple[Path, Path]:
    """The robot corpus (rendered once, cached by its arguments) and its store (ingested once)."""
    from pipeline.ingest import ingest_corpus
    from pipeline.samples import make_samples
    from schemas import CorpusConfig, SamplingConfig, SourceSpec, StoreConfig

    work = Path(args.work)
    samples = work / f"samples-{args.image_size}-{args.episodes_per_task}"
    make_samples(samples, tasks=args.tasks.split(","), episodes_per_task=args.episodes_per_task,
                 human_episodes_per_task=1, image_size=args.image_size, cameras=("corner",), progress=True)
    robot = samples / "robot"
    store = work / f"store-{args.image_size}-{args.episodes_per_task}-{args.model}-{args.tokens.replace(':', '')}"
    if not store.exists():
        fps = json.loads((robot / "meta/info.json").read_text())["fps"]  # every frame: the samples lerobot sees
        source = SourceSpec.model_validate({"id": "robot", "kind": "robot", "format": "lerobot", "uri": str(robot),
                                            "cameras": [CAMERA], "action_fields": ["action"],
                                            "state_fields": ["observation.state"], "fps": fps})
        cfg = CorpusConfig(sources=[source], encoder=_encoder_cfg(args), sampling=SamplingConfig(fps=fps),
                           store=StoreConfig(uri=str(store)))
        report = ingest_corpus(cfg, progress=True, executor="local")
        print(f"ingested {report.added} episodes, {report.frames} frames into {store}", flush=True)
    return robot, store


def run_side(python: str, side: str, args, robot: Path, store: Path) -> dict:
    cmd = [python, "-m", "benchmarks.bench_features_vs_video", "--side", side, "--robot", str(robot),
           "--store", str(store)] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                     if k in PASSED]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(["nice", "-n", "10", *cmd], cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{side} side failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


PASSED = ("model", "image_size", "tokens", "batch", "workers", "threads", "batches", "warmup", "k_seconds",
          "min_seconds")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lerobot-python", help="python of a venv with lerobot (required unless --side)")
    p.add_argument("--work", default="/tmp/lawam-bench-features-vs-video", help="samples and store, cached")
    p.add_argument("--tasks", default="reach-v3,push-v3")
    p.add_argument("--episodes-per-task", type=int, default=3)
    p.add_argument("--image-size", type=int, default=128, help="rendered side = the encoder's input side")
    p.add_argument("--model", default="vit_tiny_patch16_224")
    p.add_argument("--tokens", default="mean")
    p.add_argument("--batch", type=int, default=32, help="pairs per batch")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, both sides")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the training process, both sides")
    p.add_argument("--batches", type=int, default=20, help="timed batches")
    p.add_argument("--warmup", type=int, default=2, help="batches before timing starts")
    p.add_argument("--min-seconds", type=float, default=5.0, help="time the store side for at least this long")
    p.add_argument("--k-seconds", type=float, default=0.5, help="pair gap (a multiple of 1/fps)")
    p.add_argument("--side", choices=("ours", "lerobot"), help=argparse.SUPPRESS)
    p.add_argument("--robot", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        print(json.dumps((side_ours if args.side == "ours" else side_lerobot)(args)), flush=True)
        return
    if not args.lerobot_python:
        p.error("--lerobot-python is required (a venv with lerobot: see the module docstring)")
    robot, store = prepare(args)
    load_before = os.getloadavg()
    results = {side: run_side(py, side, args, robot, store)
               for side, py in (("ours", sys.executable), ("lerobot", args.lerobot_python))}
    load_after = os.getloadavg()
    ratio = results["ours"]["frames_per_s"] / results["lerobot"]["frames_per_s"]
    print(f"\n{'':10} {'frames/s to the trainer':>24} {'first batch':>12}")
    for side, r in results.items():
        print(f"{side:10} {r['frames_per_s']:>24.1f} {r['first_batch_s']:>11.1f}s")
    lr = results["lerobot"]
    print(f"lerobot's time: {lr['loader_wait_s']:.1f} s waiting on its DataLoader (video decode: "
          f"{lr['decode_only_frames_per_s']:.1f} frames/s alone), {lr['encoder_s']:.1f} s in the frozen encoder")
    print(f"ours / lerobot: {ratio:.1f}x  ({args.model} @ {args.image_size} px, tokens {args.tokens}, batch "
          f"{args.batch} pairs, {args.workers} loader workers, {args.threads} threads; lerobot "
          f"{results['lerobot'].get('lerobot')} decoding with {results['lerobot'].get('video_backend')}; "
          f"load {load_before[0]:.0f} -> {load_after[0]:.0f})")
    out = REPO / "benchmarks" / "results" / "features_vs_video.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k in PASSED}, "results": results,
                               "ours_over_lerobot": ratio, "load_1min": [load_before[0], load_after[0]]}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
