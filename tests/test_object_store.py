"""Sources and stores on object storage (s3://), against a real S3 API server on loopback
(moto's standalone server): nothing in the path from video to store may assume a local disk."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.sources import iter_episodes
from pipeline.store import FeatureStore
from schemas import SourceSpec
from tests.datasets import make_video
from tests.encoders import TINY

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "moto_server did not start"
                time.sleep(0.2)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("lawam-test")
        yield fs
    finally:
        server.terminate()
        server.wait(timeout=10)
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_videos_on_s3_ingest_into_a_store_on_s3(s3, tmp_path):
    for i in range(2):
        local = make_video(tmp_path / f"c{i}.mp4", n_frames=20, fps=10, seed=i)
        s3.put(str(local), f"lawam-test/videos/c{i}.mp4")
    spec = SourceSpec(id="remote", kind="human", format="video_dir", uri="s3://lawam-test/videos")
    assert sorted(r.episode_id for r in iter_episodes(spec)) == ["c0.mp4", "c1.mp4"]
    corpus = tmp_path / "corpus.yaml"
    corpus.write_text(yaml.safe_dump({"sources": [spec.model_dump(mode="json", exclude_none=True)],
                                      "encoder": TINY.model_dump(mode="json"), "sampling": {"fps": 5},
                                      "store": {"uri": "s3://lawam-test/store"}}))
    # A fresh process, as a user runs it: its local Ray workers inherit the S3 settings.
    cmd = [sys.executable, "-m", "flows.cli", "ingest", str(corpus), "--no-flow", "--no-progress"]
    result = subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    store = FeatureStore.open("s3://lawam-test/store")
    assert sorted(store.episodes()["frames"].to_pylist()) == [10, 10]
    assert FeatureStore.open("s3://lawam-test/store", version=store.version).version == store.version
    assert pq.read_table("lawam-test/store/catalog.parquet", filesystem=s3).num_rows == 2  # a folder of parts
    again = subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "added 0, skipped 2" in again.stdout
