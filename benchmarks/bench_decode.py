"""Decode stage vs raw PyAV, side by side in one run on the same clips.

Budget (DESIGN.md): ``decode_frames`` >= 0.9x a raw PyAV sequential decode of the same frames.

The baseline is the plain loop a careful person writes with PyAV: open, decode every frame in
order, and for the frames the target rate keeps (the same source frames ``decode_frames`` picks,
computed outside the timed region) one swscale call to RGB at the scaled size, then the centre
crop. It uses the same swscale settings as our path (``threads=1``, ``AREA``); the "naive" row is
the same loop with av's default ``to_ndarray(width=, height=)`` (swscale threads on), for
reference only. Methods run interleaved (clip by clip, repeat by repeat) so machine noise hits
them alike; each figure is the median over repeats.

Clips: the anchor workload of ../shared/bench/make_clips.py (640x480 h264 30 fps, moving
textured scene), regenerated here with the same recipe and seed, or reused when present.

    python benchmarks/bench_decode.py --clips 4 --seconds 10 --fps 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.clips import FPS as SRC_FPS  # noqa: E402
from benchmarks.clips import (  # noqa: E402
    H,
    W,
    make_clips,  # noqa: E402
)
from pipeline.decode import decode_frames, pick_frame_indices, resize_geometry  # noqa: E402


def raw_pyav(path: Path, keep: set[int], size: int, *, naive: bool = False) -> int:
    """Baseline: sequential decode, convert + centre-crop the kept frames. Returns frames kept."""
    sw, sh, x0, y0 = resize_geometry(W, H, size, "center_crop")
    kept = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            if i in keep:
                if naive:
                    rgb = frame.to_ndarray(width=sw, height=sh, format="rgb24")
                else:
                    rgb = frame.to_ndarray(width=sw, height=sh, format="rgb24", interpolation="AREA", threads=1)
                _ = np.ascontiguousarray(rgb[y0 : y0 + size, x0 : x0 + size])
                kept += 1
    return kept


def ours(path: Path, fps: float, size: int, backend: str) -> int:
    return sum(len(b) for b in decode_frames(str(path), fps=fps, size=size, backend=backend))


def bench(paths: list[Path], fps: float, size: int, repeats: int, n_src: int) -> dict:
    keeps = {p: set(pick_frame_indices(np.arange(n_src) / SRC_FPS, fps=fps).tolist()) for p in paths}
    methods: dict[str, Callable[[Path], int]] = {
        "raw_pyav": lambda p: raw_pyav(p, keeps[p], size),
        "raw_pyav_naive": lambda p: raw_pyav(p, keeps[p], size, naive=True),
        "ours_auto": lambda p: ours(p, fps, size, "auto"),
        "ours_pyav": lambda p: ours(p, fps, size, "pyav"),
        "ours_decord": lambda p: ours(p, fps, size, "decord"),
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    kept: dict[str, int] = {}
    for _ in range(repeats):
        spent = dict.fromkeys(methods, 0.0)
        for p in paths:
            for m, fn in methods.items():
                t0 = time.perf_counter()
                kept[m] = fn(p)
                spent[m] += time.perf_counter() - t0
        for m in methods:
            times[m].append(spent[m])
    total_src = n_src * len(paths)
    out: dict = {"fps": fps, "size": size, "source_frames": total_src, "kept_per_clip": kept, "methods": {}}
    base = times["raw_pyav"]
    for m, ts in times.items():
        out["methods"][m] = {
            "source_frames_per_s": round(total_src / statistics.median(ts), 1),
            "kept_frames_per_s": round(kept[m] * len(paths) / statistics.median(ts), 1),
            "ratio_vs_raw_pyav": round(statistics.median(b / t for b, t in zip(base, ts, strict=True)), 3),
            "seconds": [round(t, 3) for t in ts],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=4, help="number of anchor clips")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each clip")
    ap.add_argument("--fps", type=float, default=5.0, help="target frame rate (30 is always measured too)")
    ap.add_argument("--size", type=int, default=224, help="output side in pixels")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    ap.add_argument("--clip-dir", type=Path, default=Path("data/bench_clips"), help="where clips are made/reused")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/decode.json"))
    args = ap.parse_args()

    paths = make_clips(args.clip_dir, args.clips, args.seconds)
    n_src = int(args.seconds * SRC_FPS)
    results = []
    for fps in dict.fromkeys([args.fps, 30.0]):
        r = bench(paths, fps, args.size, args.repeats, n_src)
        results.append(r)
        print(f"\nfps={fps:g} size={args.size}: {args.clips} clips x {args.seconds:g}s 640x480 h264, "
              f"{r['kept_per_clip']['ours_pyav']} frames kept per clip")
        print(f"  {'method':16s} {'src frames/s':>12s} {'kept frames/s':>13s} {'x raw PyAV':>10s}")
        for m, v in r["methods"].items():
            print(f"  {m:16s} {v['source_frames_per_s']:12.1f} {v['kept_frames_per_s']:13.1f} "
                  f"{v['ratio_vs_raw_pyav']:10.3f}")
    import decord

    report = {
        "benchmark": "decode",
        "budget": "ours_auto >= 0.9 x raw_pyav",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "av": av.__version__, "ffmpeg": ".".join(map(str, av.ffmpeg_version_info))
                    if isinstance(av.ffmpeg_version_info, tuple) else str(av.ffmpeg_version_info),
                    "decord": decord.__version__},
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": results,
        "budget_met": all(r["methods"]["ours_auto"]["ratio_vs_raw_pyav"] >= 0.9 for r in results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nbudget (ours_auto >= 0.9x raw PyAV) met: {report['budget_met']}; wrote {args.out}")


if __name__ == "__main__":
    main()
