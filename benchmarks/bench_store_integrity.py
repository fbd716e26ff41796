"""Store integrity costs, side by side in one run: CRC32C on every chunk vs none, `verify`'s
throughput, and how many chunk files one clean write leaves unreferenced.

- read/write ratio: the same episodes written into two stores, codecs `zstd+crc32c` (ours)
  and `zstd` alone; reads alternate between the two, repeat by repeat, median of each.
- verify: `verify_store` over the checksummed store (every chunk decoded and checked).
- unreferenced: chunk files on disk vs those Icechunk's garbage collection would delete right
  after one clean commit (`garbage_collect(now, dry_run=True)`).

    python benchmarks/bench_store_integrity.py --episodes 100 --frames 100
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline.store.writer as writer_module  # noqa: E402
from pipeline.sources.base import EpisodeRef  # noqa: E402
from pipeline.store import FeatureStore, StoreWriter  # noqa: E402
from pipeline.store.backend import open_repo  # noqa: E402
from pipeline.store.format import checksummed  # noqa: E402
from pipeline.store.verify import verify_store  # noqa: E402
from schemas.identity import EncoderIdentity, SamplingParams  # noqa: E402
from schemas.records import ActionTrack  # noqa: E402


def build(uri: str, episodes: list[np.ndarray], crc: bool, chunk_frames: int) -> float:
    from zarr.codecs import ZstdCodec

    shutil.rmtree(uri, ignore_errors=True)
    writer_module.checksummed = checksummed if crc else (lambda: [ZstdCodec()])
    t = time.perf_counter()
    encoder = EncoderIdentity(model="bench", weights="random-init:seed=0", image_size=32, mean=(0.5,) * 3,
                              std=(0.5,) * 3, tokens="mean", layer=-1)
    with StoreWriter.open(uri, encoder=encoder, chunk_frames=chunk_frames) as w:
        for i, f in enumerate(episodes):
            ref = EpisodeRef(source="s", episode_id=f"e{i}", kind="robot", uri=f"/bench/{i}", content_hash=str(i))
            w.start_episode(ref, SamplingParams(fps=10.0, size=32))
            w.append_frames(ref, f, np.arange(len(f)) / 10.0)
            at = np.arange(2 * len(f)) / 20.0
            w.finish_episode(ref, ActionTrack(at, np.random.default_rng(i).normal(size=(len(at), 7))
                                              .astype(np.float32)), fps=10.0)
        w.commit("bench")
    writer_module.checksummed = checksummed
    return time.perf_counter() - t


def read_all(uri: str) -> float:
    store = FeatureStore.open(uri, cache_bytes=1)
    t = time.perf_counter()
    for key in store.keys:
        store.episode(key)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--chunk-frames", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    episodes = [rng.normal(size=(args.frames, args.tokens, args.dim)).astype(np.float16) for _ in range(args.episodes)]
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        crc, plain = str(tmp / "crc"), str(tmp / "plain")
        writes = {"crc": [], "plain": []}
        for _ in range(2):
            writes["plain"].append(build(plain, episodes, False, args.chunk_frames))
            writes["crc"].append(build(crc, episodes, True, args.chunk_frames))
        reads = {"crc": [], "plain": []}
        for _ in range(args.repeats):
            reads["crc"].append(read_all(crc))
            reads["plain"].append(read_all(plain))
        t = time.perf_counter()
        report = verify_store(crc, progress=False)
        verify_s = time.perf_counter() - t
        files = len(list((tmp / "crc" / "repo" / "chunks").iterdir()))
        unreferenced = open_repo(crc, create=False).garbage_collect(datetime.now(UTC), dry_run=True).chunks_deleted
        med = {k: statistics.median(v) for k, v in reads.items()}
        result = {
            "params": vars(args),
            "read_s_median": med, "read_ratio_crc_over_plain": med["crc"] / med["plain"],
            "write_s_min": {k: min(v) for k, v in writes.items()},
            "write_ratio_crc_over_plain": min(writes["crc"]) / min(writes["plain"]),
            "verify": {"episodes": report.episodes, "chunks": report.chunks, "mb": report.bytes / 1e6,
                       "seconds": verify_s, "mb_per_s": report.bytes / 1e6 / verify_s, "ok": report.ok},
            "chunk_files": files, "unreferenced_after_one_commit": unreferenced,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "store_integrity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
