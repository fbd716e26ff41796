"""A scheduled refresh with nothing new, against the first ingest of the same corpus.

Side by side, in one run, each in a FRESH process (`python -m benchmarks.bench_refresh --child`),
as a cron job or a Prefect deployment would run them:

  first ingest    a new store: every clip hashed, decoded, encoded, committed
  no-op refresh   the same corpus again: the store's `files` table says every file is
                  unchanged, so no clip is read; nothing is decoded or committed

For each: wall time of the whole process (interpreter start and imports included), the
bytes the ingest hashed (`hashing.hash_stats()`, i.e. read from the corpus files by the
driver), and the driver's /proc/self/io `rchar` (every byte it read through read(): corpus,
store, metadata) and `read_bytes` (what reached the disk) over the ingest call. Decoding
happens in Ray workers, so the first ingest reads each clip once more there, uncounted here.

Corpus: 200 clips of 2 s (640x480 h264 30 fps, the recipe of benchmarks/clips.py; `--unique
20` makes 20 and copies each to 10 files, quicker to build), cached under data/bench-refresh/.
Prints the figures and ratios, writes benchmarks/results/refresh.json.
Usage: python -m benchmarks.bench_refresh [--clips 200] [--seconds 2] [--model M] [--size 112]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "bench-refresh"


def _io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


def child(corpus_yaml: str) -> None:
    """One ingest of the corpus, as `lawam ingest --no-flow` runs it; prints a JSON line."""
    from pipeline.ingest import ingest_corpus
    from pipeline.sources import hashing
    from schemas import load_corpus

    cfg = load_corpus(corpus_yaml)
    before, t = _io(), time.perf_counter()
    report = ingest_corpus(cfg, progress=False)
    wall = time.perf_counter() - t
    after = _io()
    print(json.dumps({"ingest_s": wall, "added": report.added, "skipped": report.skipped,
                      "version_after": report.version_after, "hashed_files": hashing.hash_stats()["files"],
                      "hashed_bytes": hashing.hash_stats()["bytes"], "rchar": after["rchar"] - before["rchar"],
                      "read_bytes": after["read_bytes"] - before["read_bytes"]}))


def run_fresh(corpus_yaml: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_USAGE_STATS_ENABLED": "0"}
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_refresh", "--child", str(corpus_yaml)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=7200)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"child failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return {"process_s": wall, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--unique", type=int, default=200, help="distinct videos, copied round-robin to make --clips files")
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--model", default="vit_small_patch14_dinov2")
    ap.add_argument("--size", type=int, default=112)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return

    import yaml

    from benchmarks.clips import make_clips

    t = time.perf_counter()
    unique = make_clips(DATA / f"unique-{args.seconds:g}s", n=min(args.unique, args.clips), seconds=args.seconds)
    whole = len(unique) == args.clips == len(list(unique[0].parent.glob("*.mp4")))  # the folder is the corpus
    clips = unique[0].parent if whole else DATA / f"clips-{args.clips}x{args.seconds:g}s"
    clips.mkdir(parents=True, exist_ok=True)
    paths = unique if whole else []
    for k in range(len(paths), args.clips):  # distinct files (own inode and bytes), repeating the videos
        path = clips / f"clip_{k:04d}.mp4"
        if not path.exists():
            shutil.copyfile(unique[k % len(unique)], path.with_suffix(".partial"))
            os.replace(path.with_suffix(".partial"), path)
        paths.append(path)
    print(f"corpus: {len(paths)} clips in {clips} ({time.perf_counter() - t:.0f} s to make or find)", flush=True)
    corpus_bytes = sum(p.stat().st_size for p in paths)
    store = DATA / "store"
    shutil.rmtree(store, ignore_errors=True)
    corpus_yaml = DATA / "corpus.yaml"
    corpus_yaml.write_text(yaml.safe_dump({
        "name": "bench-refresh",
        "sources": [{"id": "clips", "kind": "human", "format": "video_dir", "uri": str(clips)}],
        "encoder": {"model": args.model, "image_size": args.size, "tokens": "mean", "batch_size": 32},
        "sampling": {"fps": args.fps}, "store": {"uri": str(store)},
    }))
    load = [os.getloadavg()[0]]
    first = run_fresh(corpus_yaml)
    load.append(os.getloadavg()[0])
    noop = run_fresh(corpus_yaml)
    load.append(os.getloadavg()[0])
    assert first["added"] == len(paths) and noop["added"] == 0 and noop["version_after"] is None, (first, noop)

    rows = [("", "first ingest", "no-op refresh", "ratio"),
            ("process wall s", f"{first['process_s']:.1f}", f"{noop['process_s']:.2f}",
             f"{100 * noop['process_s'] / first['process_s']:.2f}%"),
            ("ingest call s", f"{first['ingest_s']:.1f}", f"{noop['ingest_s']:.2f}",
             f"{100 * noop['ingest_s'] / first['ingest_s']:.2f}%"),
            ("corpus bytes hashed", f"{first['hashed_bytes']:,}", f"{noop['hashed_bytes']:,}",
             f"{100 * noop['hashed_bytes'] / corpus_bytes:.3f}% of corpus"),
            ("driver rchar", f"{first['rchar']:,}", f"{noop['rchar']:,}",
             f"{100 * noop['rchar'] / corpus_bytes:.3f}% of corpus"),
            ("driver read_bytes (disk)", f"{first['read_bytes']:,}", f"{noop['read_bytes']:,}", "")]
    print(f"\n{len(paths)} clips x {args.seconds:g} s, {corpus_bytes / 1e6:.1f} MB; {args.model} @ {args.size} px, "
          f"{args.fps:g} fps; load average {', '.join(f'{x:.1f}' for x in load)} (start, between, end)")
    for r in rows:
        print(f"{r[0]:<26}{r[1]:>18}{r[2]:>18}   {r[3]}")
    results = {"clips": len(paths), "seconds_per_clip": args.seconds, "corpus_bytes": corpus_bytes,
               "model": args.model, "image_size": args.size, "fps": args.fps, "cpus": os.cpu_count(),
               "load_average": load, "first_ingest": first, "noop_refresh": noop,
               "noop_process_time_ratio": noop["process_s"] / first["process_s"],
               "noop_hashed_bytes_ratio": noop["hashed_bytes"] / corpus_bytes,
               "noop_rchar_ratio": noop["rchar"] / corpus_bytes}
    out = REPO / "benchmarks" / "results" / "refresh.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
