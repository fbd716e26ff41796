"""Many short episodes: lawam ingest against the plain Ray Data script and an in-process loop.

Workload (issue #8): 1,000 one-second 64x64 h264 clips (30 fps, cached under
data/bench-short-clips/), sampled at 5 fps, `vit_tiny_patch16_224` at 32 px with `tokens: cls`
— the encoder costs next to nothing, so what is measured is the per-episode cost of each path.

Side by side, in one invocation, on the same clips:

  in-process loop  `decode_frames` + `FrozenEncoder.encode`, one episode after another, one process
  lawam ingest     `ingest_episodes` (library call, no Prefect) into a fresh store
  ray-data anchor  ../shared/bench/raydata_ingest.py in a subprocess (read_videos -> timm actor -> Parquet)

Every figure is wall time of the whole job, the model build and the actors' start included.
Ray start-up is reported both ways: "excl. start" is the like-for-like figure (our ingest timed
after `ensure_ray()`; the anchor's own printed timer, which starts after its `ray.init`; the loop
needs no Ray). "incl. start" adds `ray.init` (ours: `ensure_ray()`; the anchor: its process's
whole life, so its imports of torch, timm and Ray count too, which flatters us a little).
The in-process loop uses every core for torch, as a plain script does by default.
Prints episodes/s and ratios; writes benchmarks/results/short_clips.json.

Usage: python -m benchmarks.bench_short_clips [--clips 1000] [--no-anchor]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import av  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_ANCHOR = REPO.parent / "shared" / "bench" / "raydata_ingest.py"
if not SHARED_ANCHOR.exists():  # a worktree under /work/wt/<name>: the shared folder is /work/shared
    SHARED_ANCHOR = Path("/work/shared/bench/raydata_ingest.py")
CACHE = REPO / "data" / "bench-short-clips"
SIDE, SRC_FPS, SECONDS = 64, 30, 1.0
FPS, MODEL, SIZE = 5, "vit_tiny_patch16_224", 32


def make_short_clips(n: int, out: Path = CACHE) -> Path:
    """`n` one-second 64x64 30 fps h264 clips in `out/<n>/`; clips already there are reused."""
    d = out / str(n)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (SIDE * 2, SIDE * 2, 3), dtype=np.uint8)
    for k in range(n):
        path = d / f"clip_{k:05d}.mp4"
        if path.exists():
            continue
        tmp = d / f".clip_{k:05d}.partial.mp4"
        with av.open(str(tmp), "w", format="mp4") as c:
            s = c.add_stream("h264", rate=SRC_FPS)
            s.width, s.height, s.pix_fmt = SIDE, SIDE, "yuv420p"
            s.options = {"g": "30", "preset": "veryfast"}
            for i in range(int(SECONDS * SRC_FPS)):
                x, y = (k * 7 + i) % SIDE, (k * 3 + 2 * i) % SIDE
                img = np.ascontiguousarray(base[y : y + SIDE, x : x + SIDE])
                for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        os.replace(tmp, path)
    return d


def in_process_loop(clips: list[Path], cfg) -> tuple[float, int]:
    """Decode + encode one episode after another in this process; (seconds, frames)."""
    import torch

    from pipeline.encode import FrozenEncoder
    from pipeline.ingest.frames import decode_episode_blocks
    from pipeline.sources.base import EpisodeRef
    from schemas.identity import SamplingParams

    torch.set_num_threads(os.cpu_count() or 1)
    t = time.perf_counter()
    enc, frames = FrozenEncoder(cfg), 0
    for p in clips:
        ref = EpisodeRef(source="clips", episode_id=p.name, kind="human", uri=str(p), content_hash="x")
        params = SamplingParams(fps=float(FPS), size=SIZE)
        for block in decode_episode_blocks(ref, params, block_frames=cfg.batch_size):
            frames += len(enc.encode(block["frames"]))
    return time.perf_counter() - t, frames


def lawam_ingest(clip_dir: Path, store: Path, cfg) -> dict:
    import ray

    from pipeline.ingest import ensure_ray, ingest_episodes
    from pipeline.sources import iter_episodes
    from schemas import SamplingConfig, SourceSpec, StoreConfig

    t0 = time.perf_counter()
    ensure_ray()
    t1 = time.perf_counter()
    refs = list(iter_episodes(SourceSpec(id="clips", kind="human", format="video_dir", uri=str(clip_dir))))
    report = ingest_episodes(refs, encoder=cfg, sampling=SamplingConfig(fps=FPS), store=StoreConfig(uri=str(store)),
                             progress=False)
    t2 = time.perf_counter()
    ray.shutdown()
    steady = (report.steady_frames_per_s or 0) / FPS  # the anchor starts its own Ray: never two instances competing
    assert report.added == len(refs) and not report.quarantined, report.quarantined[:3]
    return {"start_s": t1 - t0, "run_s": t2 - t1, "frames": report.frames, "episodes": report.added,
            "steady_eps": steady}


def anchor(clip_dir: Path, out: Path) -> dict | None:
    if not SHARED_ANCHOR.exists():
        return None
    t = time.perf_counter()
    res = subprocess.run([sys.executable, str(SHARED_ANCHOR), str(clip_dir), str(out), str(FPS), MODEL, str(SIZE)],
                         capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t
    m = re.search(r"(\d+) frames in ([\d.]+)s", res.stdout)
    if not m:
        print("anchor failed:", res.stdout[-500:], res.stderr[-1500:], file=sys.stderr)
        return None
    return {"frames": int(m.group(1)), "run_s": float(m.group(2)), "process_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--no-anchor", action="store_true")
    ap.add_argument("--only-ingest", action="store_true", help="only our ingest (development)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "short_clips.json"))
    args = ap.parse_args()

    from schemas import EncoderConfig

    cfg = EncoderConfig(model=MODEL, image_size=SIZE, tokens="cls", batch_size=32)
    clip_dir = make_short_clips(args.clips)
    clips = sorted(clip_dir.glob("clip_*.mp4"))[: args.clips]
    n = len(clips)
    work = Path(tempfile.mkdtemp(prefix="lawam-short-"))
    try:
        if args.only_ingest:
            ours = lawam_ingest(clip_dir, work / "store", cfg)
            print(json.dumps(ours))
            return
        loop_s, loop_frames = in_process_loop(clips, cfg)
        ours = lawam_ingest(clip_dir, work / "store", cfg)
        anc = None if args.no_anchor else anchor(clip_dir, work / "anchor-out")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    loop_eps = n / loop_s
    ours_incl, ours_excl = n / (ours["start_s"] + ours["run_s"]), n / ours["run_s"]
    print(f"{n} clips of {SECONDS:g} s, {SIDE}x{SIDE} h264 -> {FPS} fps, {MODEL} @{SIZE} px, tokens cls, "
          f"{os.cpu_count()} CPUs")
    print(f"in-process loop   {loop_eps:7.1f} episodes/s  ({loop_frames} frames in {loop_s:.1f} s)")
    print(f"lawam ingest      {ours_incl:7.1f} episodes/s incl. Ray start ({ours['start_s']:.1f} s), "
          f"{ours_excl:7.1f} excl. ({ours['frames']} frames in {ours['run_s']:.1f} s)")
    result = {
        "machine": {"cpus": os.cpu_count()}, "clips": n, "fps": FPS, "model": MODEL, "size": SIZE,
        "frames": ours["frames"], "in_process_loop_eps": loop_eps, "in_process_loop_s": loop_s,
        "ray_start_s": ours["start_s"], "ingest_s": ours["run_s"],
        "ingest_eps_incl_start": ours_incl, "ingest_eps_excl_start": ours_excl,
        "ingest_vs_loop_incl_start": ours_incl / loop_eps, "ingest_vs_loop_excl_start": ours_excl / loop_eps,
    }
    best_incl, best_excl = loop_eps, loop_eps
    if anc:
        anc_incl, anc_excl = n / anc["process_s"], n / anc["run_s"]
        best_incl, best_excl = max(best_incl, anc_incl), max(best_excl, anc_excl)
        print(f"ray-data anchor   {anc_incl:7.1f} episodes/s incl. process + Ray start ({anc['process_s']:.1f} s), "
              f"{anc_excl:7.1f} excl. ({anc['frames']} frames in {anc['run_s']:.1f} s)")
        result.update({"anchor_s": anc["run_s"], "anchor_process_s": anc["process_s"],
                       "anchor_eps_incl_start": anc_incl, "anchor_eps_excl_start": anc_excl,
                       "ingest_vs_anchor_incl_start": ours_incl / anc_incl,
                       "ingest_vs_anchor_excl_start": ours_excl / anc_excl})
    result["ingest_vs_best_incl_start"] = ours_incl / best_incl
    result["ingest_vs_best_excl_start"] = ours_excl / best_excl
    print(f"lawam / faster of the others: {ours_incl / best_incl:.2f}x incl. start, "
          f"{ours_excl / best_excl:.2f}x excl. start (target >= 1.0x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
