"""Every encoder runtime and precision side by side: frames/s, and agreement with torch fp32.

For each image size, every path is built through `FrozenEncoder` (what ingest, eval and
latency run) from the same config but `runtime`/`precision`:

  torch fp32        the reference (what stores written before runtimes were named hold)
  torch bf16        torch eager, bf16 autocast
  openvino bf16     OpenVINO, bf16 inference precision (its default on a CPU with AVX-512 BF16)
  openvino fp32     OpenVINO, f32 inference precision
  onnxruntime fp32  ONNX Runtime's CPU provider (the optional `lawam[onnx]` extra)

Speed: `--rounds` rounds, each timing every path in turn on the same uint8 batch; a path's
ratio to torch fp32 is taken within each round and the median over rounds is reported (on a
shared machine the load moves between minutes, not within one round). Agreement: min cosine
(per frame, all tokens flattened) and max |difference| of the float16 features against torch
fp32 on the same frames. Batch 1: median ms to encode one frame (the encoder's share of
`lawam latency`). Build: seconds to build each path with an empty conversion cache
(trace + convert + compile) and again with the cache filled (what every later actor pays).

Prints the table and writes benchmarks/results/encoder.json.
Usage: python -m benchmarks.bench_encoder [--model M] [--sizes 112 224] [--batch 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

PATHS = [("torch", "fp32"), ("torch", "bf16"), ("openvino", "bf16"), ("openvino", "fp32"), ("onnxruntime", "fp32")]


def agreement(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(min cosine per frame, max |out - ref|) of two (B, T, D) feature arrays."""
    a, b = out.astype(np.float32).reshape(len(out), -1), ref.astype(np.float32).reshape(len(ref), -1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min()), float(np.abs(a - b).max())


def frames_per_s(enc, x: np.ndarray, seconds: float) -> float:
    """Frames/s over at least two calls and about `seconds`."""
    n, t = 0, time.perf_counter()
    while n < 2 * len(x) or time.perf_counter() - t < seconds:
        enc.encode(x)
        n += len(x)
    return n / (time.perf_counter() - t)


def batch1_ms(enc, x: np.ndarray, calls: int) -> float:
    """Median milliseconds to encode one frame (what `lawam latency` waits for beside the policy)."""
    one = x[:1]
    enc.encode(one)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        enc.encode(one)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def one_size(model: str, size: int, batch: int, rounds: int, seconds: float, threads: int,
             latency_calls: int) -> dict:
    import torch

    from pipeline.encode import EncoderError, FrozenEncoder
    from schemas import EncoderConfig

    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    base = EncoderConfig(model=model, image_size=size, tokens="grid:4x4", batch_size=batch, device="cpu")
    encoders, rows = {}, {}
    for runtime, precision in PATHS:
        name = f"{runtime} {precision}"
        cfg = base.model_copy(update={"runtime": runtime, "precision": precision})
        try:
            torch.set_num_threads(threads)
            cold = FrozenEncoder(cfg)  # empty conversion cache (a fresh LAWAM_CACHE_DIR)
            warm = FrozenEncoder(cfg)  # the converted model read back
        except EncoderError as e:  # a runtime not installed: say so, measure the rest
            print(f"{name:18s} skipped: {e}")
            continue
        encoders[name] = warm
        rows[name] = {"runtime": runtime, "precision": precision, "build_s_cold": cold.build_seconds,
                      "build_s_warm": warm.build_seconds}
        print(f"{name:18s} built in {cold.build_seconds:.1f} s (conversion cache empty), "
              f"{warm.build_seconds:.1f} s (cache filled)", flush=True)
        warm.encode(x)  # warm-up
    ref = encoders["torch fp32"].encode(x)
    for name, enc in encoders.items():
        rows[name]["min_cosine"], rows[name]["max_abs"] = agreement(enc.encode(x), ref)
        rows[name]["fps"], rows[name]["batch1_ms"] = [], []
    for r in range(rounds):
        for name, enc in encoders.items():
            rows[name]["fps"].append(frames_per_s(enc, x, seconds))
            if latency_calls:
                rows[name]["batch1_ms"].append(batch1_ms(enc, x, latency_calls))
        print(f"@{size} round {r + 1}: " + ", ".join(f"{n} {rows[n]['fps'][-1]:.1f}" for n in encoders), flush=True)
    ref_fps = np.asarray(rows["torch fp32"]["fps"])
    for row in rows.values():
        fps = np.asarray(row["fps"])
        row["fps_median"], row["fps_best"] = float(np.median(fps)), float(fps.max())
        row["vs_torch_fp32"] = float(np.median(fps / ref_fps))  # within each round, then the median
        row["batch1_ms_median"] = float(np.median(row["batch1_ms"])) if row["batch1_ms"] else None
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_small_patch14_dinov2")
    ap.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0, help="per path per round")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--latency-calls", type=int, default=20, help="batch-1 calls timed per path per round (0: none)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "encoder.json"))
    args = ap.parse_args()

    cache = tempfile.mkdtemp(prefix="lawam-bench-encoder-")
    os.environ["LAWAM_CACHE_DIR"] = cache  # conversion measured from scratch, then from the cache
    try:
        results = {size: one_size(args.model, size, args.batch, args.rounds, args.seconds, args.threads,
                                  args.latency_calls) for size in args.sizes}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"\n{args.model}, random init, batch {args.batch}, tokens grid:4x4, {args.threads} threads, "
          f"{args.rounds} rounds; load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| path | " + " | ".join(f"{s} px frames/s" for s in args.sizes) + " | vs torch fp32 | "
          "min cosine to fp32 | max abs diff | batch-1 ms | build s (cold / cached) |")
    print("| --- " * (len(args.sizes) + 6) + "|")
    for name in results[args.sizes[0]]:
        rows = [results[s][name] for s in args.sizes if name in results[s]]
        fps = " | ".join(f"{r['fps_median']:.1f}" for r in rows)
        ratio = "–".join(f"{r['vs_torch_fp32']:.2f}" for r in rows) + "×"
        cos = min(r["min_cosine"] for r in rows)
        diff = max(r["max_abs"] for r in rows)
        build = ", ".join(f"{r['build_s_cold']:.1f} / {r['build_s_warm']:.1f}" for r in rows)
        ms = " / ".join(f"{r['batch1_ms_median']:.1f}" if r["batch1_ms_median"] else "–" for r in rows)
        print(f"| {name} | {fps} | {ratio} | {cos:.6f} | {diff:.4f} | {ms} | {build} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "load_average_end": os.getloadavg()}, "params": vars(args),
        "sizes": {str(s): r for s, r in results.items()}}, indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
