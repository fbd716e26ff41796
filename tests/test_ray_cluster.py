"""`RAY_ADDRESS` runs the same ingest on a separate Ray cluster (a real `ray start --head`
on 127.0.0.1, its own processes), not on a local instance the driver starts."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from pipeline.store import FeatureStore
from tests.datasets import make_video

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    port = free_port()
    # Ray 2.60 heads require a token (~/.ray/auth_token); drivers must say they use one.
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token"}
    ray_bin = Path(sys.executable).parent / "ray"
    # --block keeps `ray start` in the foreground: the whole cluster is one process group we
    # can stop without `ray stop`, which would also kill the test session's own Ray instance.
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
         "--temp-dir", str(tmp_path_factory.mktemp("ray"))],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            probe = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={address!r}); ray.shutdown()"],
                                   env=env, capture_output=True, timeout=120)
            if probe.returncode == 0:
                break
            assert head.poll() is None and time.monotonic() < deadline, probe.stderr.decode()[-2000:]
            time.sleep(1)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)  # `ray start --block` took 30 s and more to stop on SIGTERM
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def test_ingest_runs_on_the_cluster_named_by_ray_address(ray_cluster, tmp_path):
    for i in range(2):
        make_video(tmp_path / "v" / f"c{i}.mp4", n_frames=20, fps=10, seed=i)
    corpus = tmp_path / "corpus.yaml"
    corpus.write_text(yaml.safe_dump({
        "sources": [{"id": "vids", "kind": "human", "format": "video_dir", "uri": str(tmp_path / "v")}],
        "encoder": {"model": "vit_tiny_patch16_224", "image_size": 32, "tokens": "mean", "runtime": "torch",
                    "precision": "fp32"},
        "sampling": {"fps": 5}, "store": {"uri": str(tmp_path / "store")},
    }))
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "RAY_AUTH_MODE": "token", "LAWAM_LOG": "INFO"}
    result = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", str(corpus), "--no-flow", "--no-progress"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Connecting to existing Ray cluster at address: {ray_cluster}" in result.stderr
    assert "Started a local Ray instance" not in result.stderr
    assert len(FeatureStore.open(str(tmp_path / "store"))) == 2



def test_without_ray_address_a_stale_cluster_file_is_ignored(tmp_path):
    """Issue #19: after a cluster was stopped, Ray's `ray_current_cluster` file still named it,
    and every later ingest on the machine died with "When connecting to an existing cluster,
    num_cpus and num_gpus must not be provided" (no RAY_ADDRESS set). Without RAY_ADDRESS a run
    starts a local Ray of its own, whatever that file says."""
    make_video(tmp_path / "v" / "c0.mp4", n_frames=20, fps=10, seed=0)
    corpus = tmp_path / "corpus.yaml"
    corpus.write_text(yaml.safe_dump({
        "sources": [{"id": "vids", "kind": "human", "format": "video_dir", "uri": str(tmp_path / "v")}],
        "encoder": {"model": "vit_tiny_patch16_224", "image_size": 32, "tokens": "mean", "runtime": "torch",
                    "precision": "fp32"},
        "sampling": {"fps": 5}, "store": {"uri": str(tmp_path / "store")},
    }))
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")  # nobody there
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(ray_tmp),
                                                                              "LAWAM_LOG": "INFO"}
        result = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", str(corpus), "--no-flow",
                                 "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Started a local Ray instance" in result.stderr
    assert len(FeatureStore.open(str(tmp_path / "store"))) == 1
