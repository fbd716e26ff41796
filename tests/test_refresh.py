"""Refreshing a store: unchanged files are not read again in a fresh process, quarantined
episodes are retried only when their input changed (or when asked), and a no-op `lawam
ingest` loads neither Ray, torch nor Prefect. Real videos, real Icechunk stores; the ingests run
on the local executor (what is re-read and re-done is the same on Ray: tests/test_ingest.py).

A fresh process is `hashing.clear_cache()` (this process forgets every digest it computed)
for the in-process checks, and a real subprocess for the import check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from pipeline.catalog import summarize
from pipeline.ingest import ingest_corpus
from pipeline.sources import hashing
from pipeline.store import FeatureStore, StoreWriter
from pipeline.store.files import committed_files
from schemas import CorpusConfig, SamplingConfig, SourceSpec, StoreConfig
from tests.datasets import make_video
from tests.encoders import TINY

REPO = Path(__file__).resolve().parents[1]
RACY = 0.3  # seconds: the racy window for these tests, so "old enough" costs a short sleep


def corpus(videos: Path, store: Path) -> CorpusConfig:
    return CorpusConfig(name="t", sources=[SourceSpec(id="vids", kind="human", format="video_dir", uri=str(videos))],
                        encoder=TINY, sampling=SamplingConfig(fps=5), store=StoreConfig(uri=str(store)))


def refresh(cfg: CorpusConfig, **kw):
    """An ingest as a fresh process runs it: no digest known but what the store remembers.
    Returns (report, files read for hashing, bytes read for hashing)."""
    hashing.clear_cache()
    report = ingest_corpus(cfg, progress=False, executor="local", **kw)
    stats = hashing.hash_stats()
    return report, stats["files"], stats["bytes"]


def row(store: Path, episode_id: str) -> dict:
    cat = FeatureStore.open(str(store)).catalog()
    return cat.filter(pc.equal(cat["episode_id"], episode_id)).to_pylist()[0]


@pytest.fixture
def racy_window(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(hashing, "RACY_WINDOW_S", RACY)
    return RACY


def test_a_fresh_refresh_reads_only_files_whose_identity_changed(racy_window, tmp_path, monkeypatch):
    videos, store = tmp_path / "videos", tmp_path / "store"
    for i, name in enumerate("abc"):
        make_video(videos / f"{name}.mp4", n_frames=10, seed=i)
    time.sleep(racy_window + 0.1)  # a, b, c are old when hashed
    make_video(videos / "d.mp4", n_frames=10, seed=3)  # hashed right after it was written: racy
    cfg = corpus(videos, store)

    first, read, _ = refresh(cfg)
    assert (first.added, read) == (4, 4)

    # Fresh process, nothing changed: only the racy entry is read again; nothing is re-done, and
    # the store version stays (d's now trusted hash waits for the next commit).
    again, read, nbytes = refresh(cfg)
    assert (again.added, again.skipped, again.version_after) == (0, 4, None)
    assert (read, nbytes) == (1, (videos / "d.mp4").stat().st_size)

    # a: same size, one byte changed (in the muxer's name at the end: still a valid video), mtime
    # restored (its ctime moves: the identity still changes). b: touched, bytes unchanged. c: untouched.
    a, b, c, d = (videos / f"{n}.mp4" for n in "abcd")
    st = a.stat()
    data = bytearray(a.read_bytes())
    data[-1] ^= 0x01
    a.write_bytes(bytes(data))
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (a.stat().st_size, a.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns - 5_000_000_000))
    hash_before = row(store, "a.mp4")["content_hash"]
    time.sleep(racy_window + 0.1)
    changed, read, nbytes = refresh(cfg)
    assert (read, nbytes) == (3, sum(p.stat().st_size for p in (a, b, d)))  # never c
    assert (changed.added, changed.skipped, changed.quarantined) == (1, 3, [])  # only a is re-done
    assert row(store, "a.mp4")["content_hash"] != hash_before
    quiet, read, nbytes = refresh(cfg)  # every hash is remembered now
    assert (quiet.skipped, quiet.version_after, read, nbytes) == (4, None, 0, 0)

    # Remembered hashes commit on their own once they spare a refresh enough reading (a restore
    # that touched every file, say): the threshold at 0 bytes, one touched file is enough.
    monkeypatch.setattr(StoreWriter, "remember_alone_bytes", 0)
    os.utime(c, ns=(c.stat().st_atime_ns, c.stat().st_mtime_ns))  # ctime moves, bytes do not
    time.sleep(racy_window + 0.1)
    touched, read, _ = refresh(cfg)
    assert (touched.added, read) == (0, 1) and touched.version_after is not None
    after, read, _ = refresh(cfg)
    assert (after.version_after, read) == (None, 0)

    # A deleted file's hash is dropped with the next commit (the table would otherwise grow
    # with every file a corpus ever held); its episode stays in the store.
    b.unlink()
    make_video(videos / "e.mp4", n_frames=10, seed=4)
    time.sleep(racy_window + 0.1)
    pruned, read, _ = refresh(cfg)
    assert (pruned.added, read) == (1, 1)
    remembered = {Path(u).name for u in committed_files(str(store)).column("uri").to_pylist()}
    assert remembered == {"a.mp4", "c.mp4", "d.mp4", "e.mp4"}
    assert "b.mp4" in FeatureStore.open(str(store)).episodes()["episode_id"].to_pylist()


def test_a_quarantined_file_is_retried_only_when_it_changes_or_when_asked(racy_window, tmp_path):
    videos, store = tmp_path / "videos", tmp_path / "store"
    make_video(videos / "good.mp4", n_frames=10)
    (videos / "bad.mp4").write_bytes(b"not a video at all")
    time.sleep(racy_window + 0.1)  # hashes remembered by the first run are trusted by the next
    cfg = corpus(videos, store)

    first, _, _ = refresh(cfg)
    assert first.added == 1 and [k for k, _ in first.quarantined] == ["vids/bad.mp4"]
    bad = row(store, "bad.mp4")
    assert (bad["status"], bad["failures"]) == ("quarantined", 1) and bad["failed_since"] is not None

    # Unchanged: held, not decoded, nothing committed, still one failure.
    again, _, _ = refresh(cfg)
    assert (again.quarantined, again.held, again.version_after) == ([], 1, None)
    assert row(store, "bad.mp4")["failures"] == 1

    # Asked to: retried, fails again, counted; failed_since stays the first failure.
    retried, _, _ = refresh(cfg, retry_quarantined=True)
    assert [k for k, _ in retried.quarantined] == ["vids/bad.mp4"] and retried.held == 0
    assert (row(store, "bad.mp4")["failures"], row(store, "bad.mp4")["failed_since"]) == (2, bad["failed_since"])
    listed = summarize(str(store)).quarantined
    assert [(q["episode_id"], q["failures"], q["failed_since"]) for q in listed] == [
        ("bad.mp4", 2, bad["failed_since"])]
    out = CliRunner().invoke(app, ["catalog", str(store)])
    assert out.exit_code == 0 and f"failed 2x since {bad['failed_since']:%Y-%m-%d %H:%M} UTC" in out.output
    assert pc.sum(FeatureStore.open(str(store)).catalog()["failures"]).as_py() == 2  # the Parquet/pyarrow view

    # Fixed on disk: retried without being asked, and now ok.
    make_video(videos / "bad.mp4", n_frames=10, seed=7)
    fixed, _, _ = refresh(cfg)
    assert (fixed.added, fixed.quarantined, fixed.held) == (1, [], 0)
    ok = row(store, "bad.mp4")
    assert (ok["status"], ok["failures"], ok["failed_since"]) == ("ok", 0, None)


def lawam_ingest_in_a_fresh_process(config: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """`lawam ingest CONFIG` in a new interpreter with no Prefect server configured: (its
    output, the heavy engines it imported among Ray, torch, timm and Prefect)."""
    probe = ("import json, sys\nfrom flows.cli import app\n"
             "try:\n    app()\nexcept SystemExit as e:\n    code = e.code\n"
             "heavy = sorted(m for m in ('ray', 'torch', 'timm', 'prefect') if m in sys.modules)\n"
             "print(json.dumps({'code': code, 'heavy': heavy}))\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(NO_COLOR="1", PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect"))  # no profile names a server
    result = subprocess.run([sys.executable, "-c", probe, "ingest", str(config), "--no-progress"],
                            capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["code"] == 0, result.stdout
    return result.stdout, last["heavy"]


def test_a_no_op_lawam_ingest_loads_neither_ray_torch_nor_prefect(tmp_path):
    videos, store = tmp_path / "videos", tmp_path / "store"
    make_video(videos / "a.mp4", n_frames=10)
    (videos / "bad.mp4").write_bytes(b"not a video")
    cfg = corpus(videos, store)
    ingest_corpus(cfg, progress=False, executor="local")
    config = tmp_path / "corpus.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out, heavy = lawam_ingest_in_a_fresh_process(config, tmp_path)
    assert "added 0, skipped 1" in out and "1 still quarantined" in out, out
    assert heavy == []
