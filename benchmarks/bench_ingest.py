"""End-to-end ingest against its physical limit and against the plain Ray Data script.

Side by side, in one run, on the same clips (640x480 h264 30 fps, like
../shared/bench/make_clips.py), same model, same input size, same target fps:

  encoder-only   frozen encoder on pre-decoded frames (the limit on this machine)
  lawam ingest   `ingest_episodes` from video files to a committed store
  no-op re-run   the same ingest again (nothing new: must skip everything)
  anchor         ../shared/bench/raydata_ingest.py (Ray Data read_videos -> actor -> Parquet), if present
  pair reads     random (f_t, f_{t+k}) batches from the store vs from arrays in memory

The encoder-only figure swings by up to 30% between runs on a small machine, so with
`--repeat N` the encoder alone and a fresh ingest are measured N times in turn and each
ingest is compared with the encoder figures taken just before and after it; the median
of those ratios is the headline.

Prints ratios and writes benchmarks/results/ingest.json.
Usage: python -m benchmarks.bench_ingest [--clips 8] [--seconds 10] [--fps 5] [--model M] [--size 224] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.clips import make_clips  # noqa: E402
from pipeline.encode import FrozenEncoder  # noqa: E402
from pipeline.ingest import ensure_ray, ingest_episodes  # noqa: E402
from pipeline.sources import iter_episodes  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402
from pipeline.store.pairs import PairQuery, PairReader  # noqa: E402
from schemas import EncoderConfig, SamplingConfig, SourceSpec, StoreConfig  # noqa: E402

SHARED_ANCHOR = Path(__file__).resolve().parents[2] / "shared" / "bench" / "raydata_ingest.py"


def encoder_only(cfg: EncoderConfig, n: int, enc: FrozenEncoder | None = None) -> float:
    torch.set_num_threads(os.cpu_count() or 1)
    enc = enc or FrozenEncoder(cfg)
    enc.set_threads(os.cpu_count() or 1)  # every core, whatever the runtime
    x = np.random.default_rng(0).integers(0, 255, (cfg.batch_size, cfg.image_size, cfg.image_size, 3), np.uint8)
    enc.encode(x)  # warm-up
    t, k = time.perf_counter(), 0
    while k < n:
        enc.encode(x)
        k += cfg.batch_size
    return k / (time.perf_counter() - t)


def anchor(clips: Path, out: Path, fps: float, model: str) -> float | None:
    if not SHARED_ANCHOR.exists():
        return None
    res = subprocess.run([sys.executable, str(SHARED_ANCHOR), str(clips), str(out), str(int(fps)), model],
                         capture_output=True, text=True, timeout=3600)
    m = re.search(r"= ([\d.]+) frames/s", res.stdout)
    if not m:
        print("anchor failed:", res.stdout[-500:], res.stderr[-1500:], file=sys.stderr)
        return None
    return float(m.group(1))


def pair_reads(uri: str, k: int, batch: int, seconds: float) -> tuple[float, float]:
    """Pairs/s through the trainers' pair path (`PairReader`, k frames at the store's rate)
    against gathering the same pairs from episodes already in memory."""
    store = FeatureStore.open(uri)
    fps = float(np.median(store.fps))
    reader = PairReader(store, PairQuery(k_seconds=k / fps, split="all"))
    reader.read(*next(reader.batch_indices(batch))[1:])  # warm: index and first chunks
    t, n, epoch = time.perf_counter(), 0, 0
    while time.perf_counter() - t < seconds:
        for _, eps, ti in reader.batch_indices(batch, epoch=epoch):
            reader.read(eps, ti)
            n += len(ti)
            if time.perf_counter() - t >= seconds:
                break
        epoch += 1
    from_store = n / (time.perf_counter() - t)
    rng = np.random.default_rng(1)
    eps = [store.episode(i).features for i in range(len(store))]
    valid = np.array([len(e) - k for e in eps])
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        e = rng.choice(len(eps), batch, p=valid / valid.sum())
        ti = (rng.random(batch) * valid[e]).astype(int)
        np.stack([eps[a][b] for a, b in zip(e, ti, strict=True)])
        np.stack([eps[a][b + k] for a, b in zip(e, ti, strict=True)])
        n += batch
    return from_store, n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--fps", type=float, default=5)
    ap.add_argument("--model", default="vit_small_patch14_dinov2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=3, help="encoder-alone / ingest pairs, in turn")
    ap.add_argument("--runtime", default="auto", help="encoder runtime (auto: the CPU default)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--no-anchor", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lawam-bench-"))
    clips = work / "clips"
    make_clips(clips, args.clips, args.seconds)
    enc_cfg = EncoderConfig(model=args.model, image_size=args.size, tokens="grid:4x4", batch_size=32,
                            runtime=args.runtime, precision=args.precision)
    frames_expected = int(args.clips * args.seconds * args.fps)
    model = FrozenEncoder(enc_cfg)
    n_limit = max(frames_expected // 4, 64)

    ensure_ray()  # started before timing, as the anchor script does
    spec = SourceSpec(id="clips", kind="human", format="video_dir", uri=str(clips))
    refs = list(iter_episodes(spec))
    sampling = SamplingConfig(fps=args.fps)
    limits = [encoder_only(enc_cfg, n_limit, model)]
    print(f"encoder-only      {limits[0]:8.1f} frames/s  ({args.model} @{args.size}, {model.identity.numerics})")
    runs = []
    for r in range(args.repeat):
        store = StoreConfig(uri=str(work / f"store-{r}"))
        first = ingest_episodes(refs, encoder=enc_cfg, sampling=sampling, store=store, progress=False)
        limits.append(encoder_only(enc_cfg, n_limit, model))
        limit = (limits[-2] + limits[-1]) / 2  # the encoder alone just before and just after
        fps, steady = first.frames / first.seconds, first.steady_frames_per_s or 0.0
        runs.append({"encoder_only_fps": limit, "ingest_fps": fps, "ingest_s": first.seconds,
                     "ingest_vs_encoder": fps / limit, "ingest_steady_fps": steady,
                     "ingest_steady_vs_encoder": steady / limit})
        print(f"lawam ingest #{r + 1}   {fps:8.1f} frames/s  ({first.frames} frames in {first.seconds:.1f}s, "
              f"{fps / limit:.2f}x the encoder alone at {limit:.1f} frames/s; "
              f"once running {steady:.1f} frames/s = {steady / limit:.2f}x)")
    med = {k: float(np.median([x[k] for x in runs])) for k in runs[0]}
    print(f"median            {med['ingest_vs_encoder']:.2f}x the encoder alone "
          f"({med['ingest_steady_vs_encoder']:.2f}x once running) over {len(runs)} runs")
    again = ingest_episodes(refs, encoder=enc_cfg, sampling=sampling, store=store, progress=False)
    assert again.added == 0 and again.skipped == len(refs), again
    print(f"no-op re-run      {again.seconds:8.2f} s  ({again.seconds / first.seconds:.1%} of the first ingest)")
    limit, ingest_fps = med["encoder_only_fps"], med["ingest_fps"]

    anchor_fps = None if args.no_anchor else anchor(clips, work / "anchor-out", args.fps, args.model)
    if anchor_fps:
        print(f"ray-data anchor   {anchor_fps:8.1f} frames/s  ({anchor_fps / limit:.2f}x encoder-only; "
              f"lawam is {ingest_fps / anchor_fps:.2f}x the anchor)")
    store_pps, mem_pps = pair_reads(store.uri, k=5, batch=256, seconds=3)
    print(f"pair reads        {store_pps:8.0f} pairs/s from the store, {mem_pps:.0f} pairs/s from memory "
          f"({store_pps / mem_pps:.2f}x)")

    result = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_end": os.getloadavg()},
        "encoder": model.identity.to_dict(),
        "params": vars(args), "frames": first.frames, "runs": runs, "encoder_only_each": limits,
        "encoder_only_fps": limit, "ingest_fps": ingest_fps, "ingest_vs_encoder": med["ingest_vs_encoder"],
        "ingest_steady_fps": med["ingest_steady_fps"], "ingest_steady_vs_encoder": med["ingest_steady_vs_encoder"],
        "first_ingest_s": med["ingest_s"], "noop_rerun_s": again.seconds,
        "noop_vs_first": again.seconds / first.seconds,
        "anchor_fps": anchor_fps, "ingest_vs_anchor": (ingest_fps / anchor_fps) if anchor_fps else None,
        "pairs_per_s_store": store_pps, "pairs_per_s_memory": mem_pps,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
