"""Ingest and labelling on a real two-node Ray cluster, with and without losing the worker node.

The cluster is `tests/ray_nodes.py`'s: a head on 127.0.0.2 and a worker on 127.0.0.3, each a
`ray start --block` process group with its object store at Ray's minimum (75 MiB), bound to
loopback, no fixed port, its own temp dir. Each run is a fresh `lawam` process with RAY_ADDRESS,
as a user drives a cluster; a node is lost the way a machine is (SIGKILL of its processes).
Side by side, in one run:

  ingest    --clips clips of --frames frames (10 fps, sampled at 5) on both nodes: wall time,
            frames/s, what each node decoded / encoded (the CLI's "Ray nodes:" line)
  + fault   the same into a new store, the worker node SIGKILLed once it encodes and episodes
            are written: seconds from the kill to the run's end, exit code, episodes committed,
            none duplicated or partial; then the re-run at once (the head alone, as a retry
            would find the cluster) and that it completes the corpus
  label     `lawam label` of a synthetic store (--label-episodes x 3 s) with a tiny LaWM
            trained first, on both nodes, and with the worker node killed mid-label (re-run
            when it stopped): every episode labelled exactly once
  restart   a node's start to alive (seen by a fresh driver): head, worker, worker restarted

Prints one table and writes benchmarks/results/multinode.json. Figures are comparable only
within one run (the machine may be shared): the load average is recorded beside them.
Usage: python -m benchmarks.bench_multinode [--clips 48] [--frames 100] [--encoder vit_tiny_patch16_224]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # the driver's; the nodes set their own
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.ray_nodes import (  # noqa: E402
    TINY_LAM,
    LoopbackCluster,
    Node,
    committed,
    error_lines,
    lawam,
    mislabelled,
    per_node,
    video_corpus,
    wait_running,
)
from tests.stores import SynthSource, chunk_files, write_store  # noqa: E402

AFTER_KILL_S = 300  # a run not over this long after its node's loss is recorded as hung, and killed
RUNNING: list[subprocess.Popen] = []  # `lawam` processes (sessions of their own): killed on any exit


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def run(cluster: LoopbackCluster, args: list[str], kill: tuple[Node, str, object] | None = None) -> dict:
    """One `lawam` run; with `kill` = (node, process title, progress), that node is SIGKILLed
    once it runs the title and `progress()` holds. Wall time, exit code, stdout, error lines."""
    t0 = time.monotonic()
    proc = lawam(cluster, *args)
    RUNNING.append(proc)
    row: dict = {}
    if kill:
        node, title, progress = kill
        wait_running(cluster, node, title, proc, progress=progress)
        t_kill = time.monotonic()
        cluster.kill_node(node)
        row["killed_after_s"] = t_kill - t0
    try:
        out, err = proc.communicate(timeout=AFTER_KILL_S if kill else 1800)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        row["hung"] = True
    end = time.monotonic()
    RUNNING.remove(proc)
    if kill:
        row["kill_to_end_s"] = end - t_kill
    return {**row, "wall_s": end - t0, "exit": proc.returncode, "out": out, "errors": error_lines(err)}


def ingest(cluster: LoopbackCluster, cfg: Path, kill: Node | None = None) -> dict:
    store = cfg.parent / "store"
    r = run(cluster, ["ingest", str(cfg), "--no-flow", "--no-progress"],
            (kill, "EncoderActor.encode", lambda: bool(chunk_files(store))) if kill else None)
    keys, frames = committed(store)
    fps = re.search(r"= ([\d.]+) frames/s", r["out"])
    added = re.search(r"added (\d+), skipped (\d+)", r["out"])
    r.update(episodes=len(keys), duplicated=len(keys) - len(set(keys)), frames=frames,
             frames_per_s=float(fps.group(1)) if fps else None, added=int(added.group(1)) if added else None,
             nodes=per_node("Ray nodes:", r["out"], ";") if "Ray nodes:" in r["out"] else {})
    return r


def label(cluster: LoopbackCluster, uri: Path, lam: Path, kill: Node | None = None) -> dict:
    r = run(cluster, ["label", "--store", str(uri), "--lam", str(lam), "--no-progress"],
            (kill, "LabelActor", lambda: True) if kill else None)
    m = re.search(r"\+(\d+) episodes \((\d+) pairs, (\d+) pairs/s", r["out"])
    r.update(episodes=int(m.group(1)) if m else None, pairs_per_s=int(m.group(3)) if m else None,
             nodes=per_node("episodes per Ray node:", r["out"], ",") if "per Ray node:" in r["out"] else {})
    return r


def started(cluster: LoopbackCluster, start, n: int) -> float:
    """Seconds from a node's `ray start` to `n` nodes alive, as a fresh driver sees them."""
    t = time.monotonic()
    start()
    cluster.wait_alive(n)
    return time.monotonic() - t


def label_stores(work: Path, episodes: int) -> tuple[Path, Path, Path]:
    """A synthetic store, a tiny LaWM trained on it (in this process) and two copies to label."""
    from model.train_lam import train_lam
    from schemas.training import LamConfig

    base, lam = work / "label-store", work / "lam"
    write_store(str(base), [SynthSource("bot", episodes=episodes, seconds=3.0)])
    train_lam(str(base), lam, LamConfig.model_validate(TINY_LAM), progress=False)
    a, b = shutil.copytree(base, work / "label-a"), shutil.copytree(base, work / "label-b")
    return Path(a), Path(b), lam


def fmt(r: dict, what: str) -> str:
    kill = f"{r['kill_to_end_s']:.1f}" if "kill_to_end_s" in r else "-"
    rate = (f"{r['frames_per_s']:.1f} fr/s" if r.get("frames_per_s") else
            f"{r['pairs_per_s']} pairs/s" if r.get("pairs_per_s") else "-")
    nodes = "; ".join(f"{ip} {'/'.join(map(str, v))}" for ip, v in r.get("nodes", {}).items())
    killed = f"killed {r['killed_after_s']:.0f} s in" if "killed_after_s" in r else ""
    notes = " | ".join(x for x in (nodes, killed, *r["errors"][:1], r.get("check", "")) if x)
    return f"{what:<30} {r['wall_s']:7.1f} {kill:>10} {r['exit']!s:>4} {r['episodes']!s:>8} {rate:>14}  {notes}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=48, help="clips to ingest (enough that the worker still "
                   "encodes once the first episodes are written)")
    p.add_argument("--frames", type=int, default=100, help="frames per clip (10 fps; sampled at 5 fps)")
    p.add_argument("--encoder", default="vit_tiny_patch16_224", help="timm model (random init, torch fp32)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--label-episodes", type=int, default=120, help="episodes of the synthetic store labelled")
    p.add_argument("--cpus", type=int, default=2, help="CPUs each node offers")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "multinode.json"))
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # through the `finally` below, as Ctrl-C is
    from tests.datasets import make_video

    res: dict = {"machine": {"cpus": os.cpu_count()}, "date": time.strftime("%Y-%m-%d %H:%M"), "params": vars(args),
                 "load_start": load()}
    work = Path(tempfile.mkdtemp(prefix="mnb", dir="/tmp"))
    cluster = LoopbackCluster(cpus=args.cpus, object_store_bytes=75 * 2**20)
    try:
        for i in range(args.clips):
            make_video(work / "v" / f"c{i:03d}.mp4", n_frames=args.frames, fps=10, seed=i)
        label_a, label_b, lam = label_stores(work, args.label_episodes)
        encoder = {"model": args.encoder, "image_size": args.image_size, "tokens": "mean", "batch_size": 16,
                   "runtime": "torch", "precision": "fp32"}  # torch fp32: no OpenVINO compile per encoder actor
        cfg_a, cfg_b = (video_corpus(work / name, work / "v", encoder, fps=5) for name in ("ingest-a", "ingest-b"))
        res["start_s"] = {"head": started(cluster, cluster.start_head, 1),
                          "worker": started(cluster, cluster.add_worker, 2)}
        clean = ingest(cluster, cfg_a)
        faulty = ingest(cluster, cfg_b, kill=cluster.live_worker())
        rerun = ingest(cluster, cfg_b)
        whole = set(clean["frames"])
        for r in (clean, faulty, rerun):
            r["check"] = (f"partial {sum(f not in whole for f in r['frames'])}, duplicated {r['duplicated']}, "
                          f"added {r['added']}")
        rerun["check"] += f", corpus complete: {rerun['episodes'] == args.clips}"
        rows = [("ingest, 2 nodes", clean), ("ingest, worker killed", faulty), ("  re-run at once (head alone)", rerun)]
        res["start_s"]["worker_restart"] = started(cluster, cluster.live_worker, 2)
        clean = label(cluster, label_a, lam)
        rows += [("label, 2 nodes", clean), ("label, worker killed", label(cluster, label_b, lam,
                                                                          kill=cluster.live_worker()))]
        if rows[-1][1]["exit"] != 0:
            rows.append(("  re-run at once (head alone)", label(cluster, label_b, lam)))
        for uri, r in ((label_a, clean), (label_b, rows[-1][1])):
            r["check"] = f"every episode labelled once: {not mislabelled(str(uri))}"
        res["load_end"] = load()
    finally:
        for proc in RUNNING:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'run':<30} {'wall s':>7} {'kill→end s':>10} {'exit':>4} {'episodes':>8} {'rate':>14}  "
          "per node (decoded/encoded, labelled) and checks")
    for what, r in rows:
        print(fmt(r, what))
    s = res["start_s"]
    print(f"node start to alive (fresh driver's view): head {s['head']:.1f} s, worker {s['worker']:.1f} s, "
          f"worker restarted after its loss {s['worker_restart']:.1f} s")
    print(f"load average {res['load_start']} at the start, {res['load_end']} at the end")
    res["runs"] = [{"run": what.strip(), **{k: v for k, v in r.items() if k not in ("out", "frames")}}
                   for what, r in rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
