"""A real two-node Ray cluster on this machine (`tests/ray_nodes.py`: a head on 127.0.0.2 and a
worker on 127.0.0.3, each a `ray start --block` process group with its object store capped at
Ray's minimum, 75 MiB), driven as a user drives one: `lawam` commands with `RAY_ADDRESS`.

Incident guarded against (issue #19): with the worker node's raylet SIGKILLed mid-ingest, Ray
logged "attempting to recover 3 lost objects by resubmitting their tasks" and the ingest then
made no progress and printed nothing for 4.5 minutes, holding the store's writer lock; SIGTERM
then ended it with SIGABRT (exit 134).

Expensive (a cluster start is 20-40 s on this loaded machine, each `lawam` run 10-40 s): one
cluster for the module's three tests in a serial run; a parallel run spreads them over the
workers (`long`, tests/conftest.py), each starting its own. Bounds are generous for a machine
at load 20-150 but finite: a run must end within `AFTER_KILL_S` of its node's loss (Ray declares the node dead
after ~5 s here, `RAY_health_check_*` in `tests/ray_nodes.py`; the executor's watch gives lost
work 30 s).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.store import FeatureStore
from schemas.training import LamConfig
from tests.datasets import make_video
from tests.ray_nodes import (
    REPO,
    TINY_LAM,
    LoopbackCluster,
    committed,
    error_lines,
    finish,
    lawam,
    mislabelled,
    per_node,
    video_corpus,
    wait_running,
)
from tests.stores import SynthSource, chunk_files, write_store

pytestmark = pytest.mark.long  # each test minutes: spread over the parallel workers (tests/conftest.py)
AFTER_KILL_S = 120  # node death ~5 s + the watch's 30 s + a loaded machine's slack


@pytest.fixture(scope="module")
def cluster():
    c = LoopbackCluster(cpus=2, object_store_bytes=75 * 2**20)
    try:
        c.start_head()
        c.wait_alive(1)
        c.add_worker()
        c.wait_alive(2)
        yield c
    finally:
        c.stop()


def test_ingest_label_and_training_spread_over_both_nodes_under_a_small_object_store(cluster, tmp_path):
    """Long clips through 75 MiB object stores: blocks spill instead of failing, the driver's
    memory stays bounded; decoders, encoders, labelling actors and Ray Train's workers each
    use both nodes, and the reports say what each node did."""
    cluster.live_worker()
    for i in range(4):
        make_video(tmp_path / "v" / f"long{i}.mp4", n_frames=1024, fps=10, seed=i)
    # test_vit at 128 px: a cheap encoder over 25 MB blocks (512 frames): a node's two decoders
    # hold four of them (backpressure) and its encoder one, more than its 75 MiB store.
    cfg = video_corpus(tmp_path, tmp_path / "v", {"model": "test_vit", "image_size": 128, "tokens": "mean",
                                                  "batch_size": 512}, fps=10)
    proc = lawam(cluster, "ingest", str(cfg), "--no-flow", "--no-progress")
    peak_kb = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kb = max(peak_kb, int(re.search(r"VmHWM:\s+(\d+)", status).group(1)))
        except (OSError, AttributeError):
            pass
        time.sleep(0.2)
    rc, out, err = finish(proc)
    assert rc == 0, err[-3000:]
    store = FeatureStore.open(str(tmp_path / "store"))
    assert sorted(store.episodes()["frames"].to_pylist()) == [1024] * 4
    nodes = per_node("Ray nodes:", out, ";")  # "127.0.0.2 decoded 2 episodes, encoded 1200 frames; 127.0.0.3 ..."
    assert set(nodes) == {"127.0.0.2", cluster.nodes[-1].ip}, out
    assert all(decoded > 0 and encoded > 0 for decoded, encoded in nodes.values()), out
    assert sum(d for d, _ in nodes.values()) == 4 and sum(e for _, e in nodes.values()) == 4096
    spilled = [p for p in cluster.root.rglob("ray_spilled_objects*") if p.is_dir() and any(p.iterdir())]
    spill_logs = [p for p in cluster.root.rglob("raylet.out") if "Spilled" in p.read_text(errors="replace")]
    assert spilled or spill_logs, f"25 MB blocks through 75 MiB object stores spilled nothing: {cluster.logs()}"
    assert peak_kb < 1_500_000, f"driver peak RSS {peak_kb / 1024:.0f} MiB"  # pixels never reach the driver
    print(f"4 x 1024 frames through 75 MiB stores: driver peak RSS {peak_kb / 1024:.0f} MiB, spilled on "
          f"{len(spilled) or len(spill_logs)} node(s); {nodes}")

    (tmp_path / "lam.yaml").write_text(yaml.safe_dump(LamConfig.model_validate(TINY_LAM).model_dump(mode="json")))
    rc, out, err = finish(lawam(cluster, "train-lam", "--store", str(tmp_path / "store"), "--out",
                                str(tmp_path / "lam"), "--config", str(tmp_path / "lam.yaml"), "--workers", "2",
                                "--no-progress"))
    assert rc == 0, err[-3000:]
    card = json.loads((tmp_path / "lam" / "card.json").read_text())
    assert card["workers"] == 2 and card["nodes"] == 2  # one Ray Train worker per node

    rc, out, err = finish(lawam(cluster, "label", "--store", str(tmp_path / "store"), "--lam", str(tmp_path / "lam"),
                                "--no-progress"))
    assert rc == 0, err[-3000:]
    labelled = per_node("episodes per Ray node:", out, ",")  # "127.0.0.2: 2, 127.0.0.3: 2"
    assert set(labelled) == set(nodes) and all(n > 0 for n, in labelled.values()), out
    assert sum(n for n, in labelled.values()) == 4


@pytest.mark.long(together="node-loss")  # one worker, one cluster for both node-loss tests
def test_losing_a_node_mid_ingest_ends_in_bounded_time_and_loses_nothing(cluster, tmp_path):
    """The worker node is SIGKILLed while it encodes: the run finishes on the head (its blocks go
    to the encoder left, Ray re-runs its decoders) or stops with one retryable line — within
    bounded time, never a hang. What was committed is whole and not duplicated; SIGTERM of a
    later run exits 143 (never SIGABRT); the last re-run completes the corpus."""
    worker = cluster.live_worker()
    # Enough clips that the worker node is still encoding once the first episodes are written,
    # even on a busy machine (30 ran out: the run was over before the test saw both at once).
    first_clips, more_clips = 48, 12
    for i in range(first_clips):
        make_video(tmp_path / "v" / f"c{i:02d}.mp4", n_frames=100, fps=10, seed=i)
    # torch fp32: each encoder actor of the three runs builds without an OpenVINO compile
    cfg = video_corpus(tmp_path, tmp_path / "v", {"model": "vit_tiny_patch16_224", "image_size": 32, "tokens": "mean",
                                                  "batch_size": 16, "runtime": "torch", "precision": "fp32"}, fps=5)
    store = tmp_path / "store"

    def episodes() -> list[str]:
        keys, frames = committed(store)
        assert set(frames) <= {50}, "a partial episode was committed"
        assert len(keys) == len(set(keys)), "an episode was committed twice"
        return keys

    def written(before: int):  # episode data on disk, not yet committed: the run is under way
        return lambda: len(chunk_files(store)) > before

    proc = lawam(cluster, "ingest", str(cfg), "--no-flow", "--no-progress")
    wait_running(cluster, worker, "EncoderActor.encode", proc, progress=written(0))
    t_kill = time.monotonic()
    cluster.kill_node(worker)
    rc, out, err = finish(proc, timeout=AFTER_KILL_S)
    took = time.monotonic() - t_kill
    assert rc in (0, 1), (rc, err[-3000:])
    if rc == 1:  # stopped: one retryable line
        lines = error_lines(err)
        assert len(lines) == 1 and "retry" in lines[0], err[-3000:]
    else:
        assert f"added {first_clips}" in out
    first = episodes()
    print(f"node lost -> run ended in {took:.1f} s, exit {rc}, {len(first)} episodes committed",
          *[ln for ln in err.splitlines() if ln.startswith(("error:", "WARNING pipeline"))], sep="\n  ")

    total = first_clips + more_clips
    for i in range(first_clips, total):  # more work, then SIGTERM mid-run
        make_video(tmp_path / "v" / f"c{i:02d}.mp4", n_frames=100, fps=10, seed=i)
    proc = lawam(cluster, "ingest", str(cfg), "--no-flow", "--no-progress")
    wait_running(cluster, cluster.nodes[0], "EncoderActor.encode", proc,
                 progress=written(len(chunk_files(store))))
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc, timeout=90)
    assert rc in (143, -signal.SIGTERM), (rc, err[-3000:])  # never SIGABRT (134 / -6)
    second = episodes()
    assert set(first) <= set(second)

    rc, out, err = finish(lawam(cluster, "ingest", str(cfg), "--no-flow", "--no-progress"))
    assert rc == 0, err[-3000:]
    assert f"added {total - len(second)}, skipped {len(second)}" in out
    assert len(episodes()) == total


# A driver whose task can run only on the worker node (a resource no other node has): once the
# node is lost, Ray retries the task and it waits forever, infeasible — the hang class the
# executors' `NodeWatch` bounds. Prints how long after the loss the watch ended it.
STALLED_DRIVER = """
import sys, time, ray
from pipeline.ray_watch import NodeWatch
ray.init(log_to_driver=False)
@ray.remote(num_cpus=0, resources={sys.argv[1]: 0.01})
def forever():
    print("running", flush=True)
    time.sleep(3600)
ref = forever.remote()
watch = NodeWatch("stalled", grace_s=10)
print("submitted", flush=True)
try:
    while True:
        ready, _ = ray.wait([ref], timeout=watch.poll_s)
        watch.delivered(ready)
        watch.check([] if ready else [ref])
except Exception as e:
    print(f"{type(e).__name__} after the loss: {time.monotonic() - min(watch.lost_at.values()):.1f} s: {e}")
"""


@pytest.mark.long(together="node-loss")
def test_losing_a_node_mid_label_ends_in_bounded_time_and_labels_each_episode_once(cluster, tmp_path):
    """The worker node is SIGKILLed while its labelling actor holds tasks: they are redone by
    the actor left, or the run stops with one retryable line and no label of it committed.
    The re-run labels every episode exactly once. Work that can never resume (a task only the
    lost node could run) ends its run within the watch's grace, not never."""
    from model.train_lam import train_lam

    uri = str(tmp_path / "store")
    write_store(uri, [SynthSource("bot", episodes=120, seconds=3.0)])
    train_lam(uri, tmp_path / "lam", LamConfig.model_validate(TINY_LAM), progress=False)
    worker = cluster.live_worker()
    stalled = subprocess.Popen([sys.executable, "-c", STALLED_DRIVER, f"node:{worker.ip}:only"], cwd=REPO,
                               env={**cluster.env(), "PYTHONPATH": str(REPO)}, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    proc = lawam(cluster, "label", "--store", uri, "--lam", str(tmp_path / "lam"), "--no-progress")
    wait_running(cluster, worker, "LabelActor", proc)
    assert stalled.stdout.readline().strip() == "submitted"
    t_kill = time.monotonic()
    cluster.kill_node(worker)
    stalled_out, stalled_err = stalled.communicate(timeout=AFTER_KILL_S)
    assert "InfrastructureError after the loss" in stalled_out, stalled_err[-3000:]
    print(stalled_out.strip().splitlines()[-1])
    rc, out, err = finish(proc, timeout=AFTER_KILL_S)
    took = time.monotonic() - t_kill
    assert rc in (0, 1), (rc, err[-3000:])
    if rc == 1:
        lines = error_lines(err)
        assert len(lines) == 1 and "retry" in lines[0], err[-3000:]
        rc, out, err = finish(lawam(cluster, "label", "--store", uri, "--lam", str(tmp_path / "lam"),
                                    "--no-progress"))
        assert rc == 0, err[-3000:]
        assert "+120 episodes" in out  # nothing of the stopped run was committed
    else:
        assert "+120 episodes" in out
    print(f"node lost -> labelling ended in {took:.1f} s, exit {rc}",
          *[ln for ln in err.splitlines() if ln.startswith(("error:", "WARNING pipeline"))], sep="\n  ")
    assert not mislabelled(uri)

