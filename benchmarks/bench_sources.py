"""The shard formats (rlds, webdataset): ingest speed against plain loops, the no-op refresh, memory.

Side by side, in one invocation, on the same data (cached under data/bench-sources/):

  rlds         lawam ingest of an RLDS dataset (written with the `tfrecord` package's writer and
               TFDS's features.json layout: JPEG steps at 10 Hz) vs a plain in-process loop over
               the same shards with the same reader (`pipeline.sources.tfrecord`), decoding the
               same kept JPEGs (Pillow), resizing them the same way and running the same encoder
  webdataset   lawam ingest of tar shards (`webdataset.TarWriter`, 640x480 h264 clips) vs a
               plain loop with the `webdataset` library + PyAV + the same encoder
  no-op        a refresh with nothing new over 100 RLDS shards and 100 tar shards, in a fresh
               process: the ingest call's time (after start-up) and the process's, files hashed
               and shards read (both must be 0)
  memory       peak RSS of a fresh process that enumerates a >= 200 MB RLDS shard and runs the
               decode task's body over every episode (what a Ray decode worker does), against the
               shard's size and its largest record; and of a whole ingest's driver

Ray's start-up is excluded from the lawam figures (reported apart); the loops use every core for
torch, as a plain script does. Figures from a loaded machine mean something only as ratios
measured side by side; the load average is printed with them. Writes
benchmarks/results/sources.json.

Usage: python -m benchmarks.bench_sources [--episodes 48] [--clips 16] [--model M --size S]
       [--big-mb 200] [--skip rlds,webdataset,noop,memory]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "bench-sources"
FEATURES = REPO / "tests" / "fixtures_rlds" / "oxe_tiny" / "1.0.0" / "features.json"
RATE, FPS = 10.0, 5.0


# --- data ---------------------------------------------------------------------------------------


def _jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _scene(side: int, seed: int) -> np.ndarray:
    """A smooth textured image (JPEG sizes like a camera's, not like noise's)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (side // 8 + 1, side // 8 + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 8, 0), 8, 1)[:side, :side]


def write_rlds(folder: Path, shards: int, episodes: int, steps: int, side: int, *, jpegs: list[bytes] | None = None,
               name: str = "bench") -> Path:
    """An RLDS version folder: the fixture's features.json (image sides set to `side`) and
    `shards` TFRecord shards of `episodes` records in all, written by the `tfrecord` package."""
    from tfrecord.writer import TFRecordWriter

    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    text = FEATURES.read_text().replace('"32"', f'"{side}"')
    (folder / "features.json").write_text(text)
    for s in range(shards):
        writer = TFRecordWriter(str(folder / f"{name}-train.tfrecord-{s:05d}-of-{shards:05d}"))
        for e in range(s, episodes, shards):
            imgs = [jpegs[(e + t) % len(jpegs)] if jpegs else _jpeg(_scene(side, 1000 * e + t)) for t in range(steps)]
            flat = lambda a: np.asarray(a, np.float32).reshape(-1).tolist()  # noqa: E731
            writer.write({
                "steps/observation/image": (imgs, "byte"),
                "steps/observation/wrist_image": (imgs[:1] * steps, "byte"),
                "steps/observation/state": (flat(np.arange(7)[None] + np.arange(steps)[:, None]), "float"),
                "steps/action": (flat(np.ones((steps, 7)) * e), "float"),
                "steps/language_instruction": ([f"task {e % 5}".encode()] * steps, "byte"),
                "steps/is_first": ([1] + [0] * (steps - 1), "int"),
                "episode_metadata/file_path": ([f"/raw/episode_{e:05d}.h5".encode()], "byte"),
            })
        writer.close()
    done.touch()
    return folder


def write_tars(folder: Path, clips: list[Path], per_shard: int) -> list[str]:
    """Tar shards of the clips as video2dataset writes them, with `webdataset.TarWriter`."""
    import webdataset as wds

    done = folder / ".complete"
    n = (len(clips) + per_shard - 1) // per_shard
    urls = [str(folder / f"{s:05d}.tar") for s in range(n)]
    if done.exists():
        return urls
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for s, url in enumerate(urls):
        with wds.TarWriter(url) as sink:
            for k, clip in enumerate(clips[s * per_shard:(s + 1) * per_shard]):
                key = f"{s:05d}{k:04d}"
                sink.write({"__key__": key, "mp4": clip.read_bytes(), "txt": f"clip {key}".encode(),
                            "json": json.dumps({"key": key, "status": "success"}).encode()})
    done.touch()
    return urls


# --- the plain loops ----------------------------------------------------------------------------


def _batches(cfg, frames_iter):
    """Encode frames in batches of cfg.batch_size; returns the count."""
    from pipeline.encode import FrozenEncoder

    enc, pending, n = FrozenEncoder(cfg), [], 0
    for f in frames_iter:
        pending.append(f)
        if len(pending) == cfg.batch_size:
            n += len(enc.encode(np.stack(pending)))
            pending = []
    if pending:
        n += len(enc.encode(np.stack(pending)))
    return n


def rlds_loop(folder: Path, cfg) -> tuple[float, int]:
    """Same reader, same kept steps, same JPEG decoder and resize, same encoder; one process."""
    import torch
    from PIL import Image

    from pipeline.decode import pick_frame_indices
    from pipeline.decode.arrays import resize_frames
    from pipeline.sources.tfrecord import iter_records, parse_example

    torch.set_num_threads(os.cpu_count() or 1)

    def frames():
        for shard in sorted(folder.glob("*.tfrecord-*")):
            with open(shard, "rb") as f:
                for rec in iter_records(f):
                    ex = parse_example(rec.data, shard.name)
                    images = ex["steps/observation/image"]
                    np.asarray(ex["steps/action"], np.float32).reshape(len(images), -1)  # the actions, as lawam
                    keep = pick_frame_indices(np.arange(len(images)) / RATE, fps=FPS)
                    decoded = [np.asarray(Image.open(io.BytesIO(images[i])).convert("RGB")) for i in keep]
                    yield from resize_frames(decoded, cfg.image_size)

    t = time.perf_counter()
    n = _batches(cfg, frames())
    return time.perf_counter() - t, n


def webdataset_loop(urls: list[str], cfg) -> tuple[float, int]:
    """The `webdataset` library reads the samples, PyAV decodes each mp4 from memory, frames
    picked at FPS by timestamp, scaled and centre-cropped to the encoder's size."""
    import av
    import torch
    import webdataset as wds

    torch.set_num_threads(os.cpu_count() or 1)
    size = cfg.image_size

    def frames():
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            with av.open(io.BytesIO(sample["mp4"])) as container:
                stream = container.streams.video[0]
                target = 0.0
                for frame in container.decode(stream):
                    if frame.time is None or frame.time + 1e-4 < target:
                        continue
                    target += 1 / FPS
                    w, h = frame.width, frame.height
                    s = size / min(w, h)
                    sw, sh = max(size, round(w * s)), max(size, round(h * s))
                    rgb = frame.to_ndarray(width=sw, height=sh, format="rgb24", interpolation="AREA")
                    y0, x0 = (sh - size) // 2, (sw - size) // 2
                    yield rgb[y0:y0 + size, x0:x0 + size]

    t = time.perf_counter()
    n = _batches(cfg, frames())
    return time.perf_counter() - t, n


def lawam_ingest(spec: dict, store: Path, cfg) -> dict:
    from pipeline.ingest import ensure_ray, ingest_corpus
    from schemas import CorpusConfig, SamplingConfig, SourceSpec, StoreConfig

    shutil.rmtree(store, ignore_errors=True)
    t0 = time.perf_counter()
    ensure_ray()
    t1 = time.perf_counter()
    report = ingest_corpus(CorpusConfig(sources=[SourceSpec(**spec)], encoder=cfg, sampling=SamplingConfig(fps=FPS),
                                        store=StoreConfig(uri=str(store))), progress=False)
    t2 = time.perf_counter()
    assert report.added and not report.quarantined, report.quarantined[:3]
    return {"ray_start_s": t1 - t0, "run_s": t2 - t1, "frames": report.frames, "episodes": report.added,
            "steady_fps": report.steady_frames_per_s}


def _steady(ours: dict, loop_fps: float) -> str:
    """lawam once its encoder actors have loaded the model (the loop builds its model in-process,
    with torch already imported: a worker must import torch and timm first)."""
    steady = ours.get("steady_fps")
    return f"{steady / loop_fps:.2f}x once the model is loaded" if steady else "no steady figure"


# --- fresh processes ----------------------------------------------------------------------------


def _child(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_sources", "--child", *args], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=3600)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return {"process_s": wall, **json.loads(res.stdout.strip().splitlines()[-1])}


def _rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set now (VmRSS) or at its peak (VmHWM), MB. Not ru_maxrss: Linux
    carries the parent's peak across fork + exec into it."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def child(kind: str, corpus_yaml: str) -> None:
    """Runs in a fresh process; prints one JSON line."""
    from pipeline.sources import hashing
    from schemas import load_corpus

    cfg = load_corpus(corpus_yaml)
    if kind == "ingest":
        from pipeline.ingest import ingest_corpus

        base = _rss_mb()
        t = time.perf_counter()
        report = ingest_corpus(cfg, progress=False)
        stats = hashing.hash_stats()
        print(json.dumps({"ingest_s": time.perf_counter() - t, "added": report.added, "skipped": report.skipped,
                          "version_after": report.version_after, "hashed_files": stats["files"],
                          "shards_read": stats["scans"], "rss_after_imports_mb": base,
                          "peak_rss_mb": _rss_mb("VmHWM")}))
    elif kind == "decode":  # what a Ray decode worker does, in this one process
        from pipeline.ingest.frames import decode_task_items
        from pipeline.sources import iter_episodes

        base = _rss_mb()
        refs = [r for spec in cfg.sources for r in iter_episodes(spec)]
        after_scan = _rss_mb("VmHWM")
        from schemas.identity import SamplingParams

        params = SamplingParams(fps=cfg.sampling.fps, size=cfg.encoder.image_size)
        frames = 0
        for i in range(0, len(refs), 8):  # the executor's batches of episodes per task
            for item in decode_task_items([(r, params) for r in refs[i:i + 8]], 32, "auto"):
                frames += len(item.get("frames", ()))
        print(json.dumps({"episodes": len(refs), "frames": frames, "rss_after_imports_mb": base,
                          "peak_rss_after_scan_mb": after_scan,
                          "peak_rss_mb": _rss_mb("VmHWM"),
                          "largest_record_mb": max(r.byte_range[1] for r in refs) / 2**20}))


def _corpus_yaml(path: Path, sources: list[dict], store: Path, model: str, size: int, tokens: str) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"name": path.stem, "sources": sources, "sampling": {"fps": FPS},
                                    "encoder": {"model": model, "image_size": size, "tokens": tokens,
                                                "batch_size": 32}, "store": {"uri": str(store)}}))
    return path


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--episodes", type=int, default=48, help="rlds: episodes (4 shards)")
    ap.add_argument("--steps", type=int, default=40, help="rlds: steps per episode at 10 Hz")
    ap.add_argument("--side", type=int, default=224, help="rlds: image side, pixels")
    ap.add_argument("--clips", type=int, default=16, help="webdataset: 2 s 640x480 clips (4 per shard)")
    ap.add_argument("--model", default="vit_small_patch14_dinov2")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--noop-shards", type=int, default=100)
    ap.add_argument("--big-mb", type=float, default=200, help="memory: size of the one RLDS shard, MiB")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: rlds,webdataset,noop,memory")
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return

    from schemas import EncoderConfig

    skip = set(filter(None, args.skip.split(",")))
    cfg = EncoderConfig(model=args.model, image_size=args.size, tokens="grid:4x4", batch_size=32)
    results: dict = {"model": args.model, "image_size": args.size, "fps": FPS, "cpus": os.cpu_count(),
                     "load_average": [os.getloadavg()[0]]}
    lines = []
    if "rlds" not in skip:
        folder = write_rlds(DATA / f"rlds-{args.episodes}x{args.steps}x{args.side}" / "1.0.0", 4, args.episodes,
                            args.steps, args.side)
        loop_s, loop_n = rlds_loop(folder, cfg)
        ours = lawam_ingest({"id": "rlds", "kind": "robot", "format": "rlds", "uri": str(folder),
                             "action_rate": RATE}, DATA / "store-rlds", cfg)
        assert ours["frames"] == loop_n, (ours, loop_n)
        ratio = (ours["frames"] / ours["run_s"]) / (loop_n / loop_s)
        results["rlds"] = {"loop_s": loop_s, "frames": loop_n, **ours, "ratio": ratio}
        lines.append(f"rlds ingest        {loop_n / loop_s:7.1f} frames/s loop, {ours['frames'] / ours['run_s']:7.1f} "
                     f"lawam = {ratio:.2f}x  (budget >= 0.9x; Ray start {ours['ray_start_s']:.1f} s apart; "
                     f"{_steady(ours, loop_n / loop_s)})")
        results["load_average"].append(os.getloadavg()[0])
    if "webdataset" not in skip:
        from benchmarks.clips import make_clips

        clips = make_clips(DATA / "clips-2s", n=args.clips, seconds=2)
        urls = write_tars(DATA / f"wds-{args.clips}", clips, per_shard=4)
        loop_s, loop_n = webdataset_loop(urls, cfg)
        ours = lawam_ingest({"id": "web", "kind": "human", "format": "webdataset", "uri": urls}, DATA / "store-wds",
                            cfg)
        ratio = (ours["frames"] / ours["run_s"]) / (loop_n / loop_s)
        results["webdataset"] = {"loop_s": loop_s, "frames": loop_n, **ours, "ratio": ratio}
        lines.append(f"webdataset ingest  {loop_n / loop_s:7.1f} frames/s loop, {ours['frames'] / ours['run_s']:7.1f} "
                     f"lawam = {ratio:.2f}x  (budget >= 0.9x; frames {loop_n} vs {ours['frames']}; "
                     f"{_steady(ours, loop_n / loop_s)})")
        results["load_average"].append(os.getloadavg()[0])
    if {"rlds", "webdataset"} - skip:
        import ray

        ray.shutdown()  # the children below start their own
    if "noop" not in skip:
        n = args.noop_shards
        rl = write_rlds(DATA / f"noop-rlds-{n}" / "1.0.0", n, n, 4, 32, name="noop")
        from benchmarks.bench_short_clips import make_short_clips

        short = sorted(make_short_clips(n).glob("*.mp4"))[:n]
        urls = write_tars(DATA / f"noop-wds-{n}", short, per_shard=1)
        store = DATA / "store-noop"
        shutil.rmtree(store, ignore_errors=True)
        corpus = _corpus_yaml(DATA / "noop.yaml", [
            {"id": "rlds", "kind": "robot", "format": "rlds", "uri": str(rl), "action_rate": RATE},
            {"id": "web", "kind": "human", "format": "webdataset", "uri": str(Path(urls[0]).parent)}],
            store, "vit_tiny_patch16_224", 32, "mean")
        time.sleep(2.5)  # the shards are older than the racy window when first hashed
        first = _child(["ingest", str(corpus)])
        noop = _child(["ingest", str(corpus)])
        assert noop["added"] == 0 and noop["version_after"] is None, noop
        results["noop"] = {"shards": 2 * n, "first": first, "noop": noop}
        lines.append(f"no-op refresh      {2 * n} shards ({n} rlds + {n} tar): ingest call {noop['ingest_s']:.2f} s "
                     f"after start-up (budget <= 2 s), process {noop['process_s']:.1f} s; files hashed "
                     f"{noop['hashed_files']}, shards read {noop['shards_read']} (first ingest: "
                     f"{first['hashed_files']}, {first['shards_read']})")
        results["load_average"].append(os.getloadavg()[0])
    if "memory" not in skip:
        side, steps = 256, 100
        pool = [_jpeg(np.random.default_rng(k).integers(0, 255, (side, side, 3), dtype=np.uint8), 95)
                for k in range(16)]
        per_episode = steps * 2 * np.mean([len(j) for j in pool])  # image + wrist
        episodes = int(np.ceil(args.big_mb * 2**20 / per_episode)) + 1
        big = write_rlds(DATA / f"big-{args.big_mb:g}mib" / "1.0.0", 1, episodes, steps, side, jpegs=pool, name="big")
        shard = next(big.glob("*.tfrecord-*"))
        store = DATA / "store-big"
        shutil.rmtree(store, ignore_errors=True)
        corpus = _corpus_yaml(DATA / "big.yaml", [{"id": "big", "kind": "robot", "format": "rlds", "uri": str(big),
                                                   "action_rate": RATE}], store, "vit_tiny_patch16_224", 32, "mean")
        decode = _child(["decode", str(corpus)])
        ingest = _child(["ingest", str(corpus)])
        size_mb = shard.stat().st_size / 2**20
        tiny = _child(["ingest", str(_corpus_yaml(DATA / "tiny.yaml", [
            {"id": "tiny", "kind": "robot", "format": "rlds", "uri": str(REPO / "tests" / "fixtures_rlds" / "oxe_tiny"),
             "action_rate": RATE}], DATA / "store-tiny", "vit_tiny_patch16_224", 32, "mean"))])
        shutil.rmtree(DATA / "store-tiny", ignore_errors=True)
        results["memory"] = {"shard_mb": size_mb, "decode_worker": decode, "ingest_driver": ingest,
                             "ingest_driver_tiny_dataset": tiny}
        lines.append(f"memory             one {size_mb:.0f} MiB shard, {decode['episodes']} episodes, largest record "
                     f"{decode['largest_record_mb']:.1f} MiB: decode path peak RSS {decode['peak_rss_mb']:.0f} MiB "
                     f"(+{decode['peak_rss_mb'] - decode['rss_after_imports_mb']:.0f} over its imports); ingest "
                     f"driver peak {ingest['peak_rss_mb']:.0f} MiB vs {tiny['peak_rss_mb']:.0f} MiB for the 0.6 MB "
                     "fixture dataset (torch + Ray, not the shard)")
        results["load_average"].append(os.getloadavg()[0])

    print(f"\n{args.model} @ {args.size} px, {FPS:g} fps, {os.cpu_count()} cpus; load average "
          f"{', '.join(f'{x:.1f}' for x in results['load_average'])} (start, after each part)")
    for line in lines:
        print(line)
    out = REPO / "benchmarks" / "results" / "sources.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
