"""Faults that are not an episode's own: the run stops with one line, keeps the last committed
version, quarantines nothing, and is retried only where a retry can help (`schemas.errors`).

Real mechanisms only: a small tmpfs filled up (ENOSPC) and remounted read-only (EROFS) when
this process may mount (root here); otherwise the store folder made read-only with chmod (as
non-root) and a file-size limit (RLIMIT_FSIZE: EFBIG) for the full disk. An S3 source is read
from a real S3 API server (moto's) that is stopped while the ingest runs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.errors import classify, is_retryable
from pipeline.store import FeatureStore
from tests.datasets import make_video
from tests.encoders import TINY
from tests.s3server import s3_server, upload

REPO = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, videos_uri: str, store: str) -> Path:
    path.write_text(yaml.safe_dump({
        "sources": [{"id": "vids", "kind": "human", "format": "video_dir", "uri": videos_uri}],
        "encoder": TINY.model_dump(mode="json"), "sampling": {"fps": 5}, "store": {"uri": store}}))
    return path


def lawam(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`lawam ARGS` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def small_disk(where: Path, size: str = "4M"):
    """A real, small filesystem at `where` (tmpfs), or None where this process cannot mount."""
    where.mkdir(parents=True, exist_ok=True)
    if not _can_mount() or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                          capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path) -> None:
    """Write until the filesystem says ENOSPC: nothing more fits."""
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (64 << 10))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


@pytest.fixture
def videos(tmp_path) -> Path:
    d = tmp_path / "videos"
    for i in range(2):
        make_video(d / f"v{i}.mp4", n_frames=20, fps=10, seed=i)
    return d


def first_ingest(videos: Path, store: str, tmp_path: Path) -> str:
    """A committed version, then new work for the next run; in this process (local executor)."""
    from pipeline.ingest import ingest_corpus
    from schemas import load_corpus

    corpus = write_corpus(tmp_path / "corpus.yaml", str(videos), store)
    assert ingest_corpus(load_corpus(corpus), progress=False, executor="local").added == 2
    make_video(videos / "v9.mp4", n_frames=40, fps=10, seed=9)
    return FeatureStore.open(store).version


def lawam_here(*args: str) -> tuple[int, list[str], str]:
    """`lawam ARGS` in this process (its Ray): exit status, non-empty output lines, output."""
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, [ln for ln in result.output.splitlines() if ln.strip()], result.output


def test_a_full_disk_stops_in_one_line_keeps_the_version_and_is_not_retryable(ray_local, videos, tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        store = str((disk or tmp_path) / "store")
        before = first_ingest(videos, store, tmp_path)
        if disk is not None:
            fill(disk)
            # The fault raised in-process (the writer's, on either executor): a resource fault,
            # which the flow does not retry.
            from pipeline.ingest import ingest_corpus
            from schemas import load_corpus

            with pytest.raises(Exception) as failure:  # noqa: PT011 - which kind it is is the point
                ingest_corpus(load_corpus(tmp_path / "corpus.yaml"), progress=False, executor="local")
            assert classify(failure.value) == "resource" and not is_retryable(failure.value)
            code, lines, output = lawam_here("ingest", str(tmp_path / "corpus.yaml"), "--no-flow", "--no-progress")
            cause = "No space left on device"
        else:  # no mount here: a file-size limit is the machine refusing the write (EFBIG). Set in this
            # process only (Ray's workers run elsewhere), and only while the failing run writes.
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (512, hard))
            try:
                code, lines, output = lawam_here("ingest", str(tmp_path / "corpus.yaml"), "--no-flow", "--no-progress")
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            cause = "File too large"
        assert code == 4, output[-3000:]
        assert len(lines) == 1 and cause in lines[0] and "last committed version" in lines[0], lines
        assert "Traceback" not in output
        after = FeatureStore.open(store)
        assert after.version == before and len(after.episodes()) == 2  # the previous version, whole
        assert not [r for r in after.catalog().to_pylist() if r["status"] != "ok"]  # nothing quarantined


def test_a_read_only_store_stops_in_one_line_and_keeps_the_version(ray_local, videos, tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        store_dir = (disk or tmp_path) / "store"
        before = first_ingest(videos, str(store_dir), tmp_path)
        if disk is not None:  # root ignores file modes: a read-only mount is what stops root
            assert subprocess.run(["mount", "-o", "remount,ro", str(disk)]).returncode == 0
        else:
            for p in [store_dir, *store_dir.rglob("*")]:
                p.chmod(p.stat().st_mode & ~0o222)
        code, lines, output = lawam_here("ingest", str(tmp_path / "corpus.yaml"), "--no-flow", "--no-progress")
        assert code == 4, output[-3000:]
        assert len(lines) == 1 and re.search("Read-only file system|Permission denied", lines[0]), lines
        assert "last committed version" in lines[0] and "Traceback" not in output
        assert FeatureStore.open(str(store_dir)).version == before
        with pytest.raises(OSError) as failure:  # what the writer meets, classified for the flow's retry policy
            from pipeline.store.backend import WriterLock

            WriterLock(str(store_dir)).__enter__()
        assert classify(failure.value) == "resource" and not is_retryable(failure.value)


def test_a_binary_config_file_is_one_config_line_exit_2(tmp_path):
    corpus = tmp_path / "corpus.yaml"
    corpus.write_bytes(bytes(range(256)) * 8)  # not UTF-8, not YAML
    code, lines, output = lawam_here("ingest", str(corpus), "--no-flow", "--no-progress")
    assert code == 2 and len(lines) == 1, output[-2000:]
    assert str(corpus) in lines[0] and "not UTF-8" in lines[0] and "Traceback" not in output


# -- an S3 source whose server goes away mid-run ---------------------------------------------


@pytest.fixture
def moto(monkeypatch):
    yield from s3_server(monkeypatch)


@pytest.mark.long
@pytest.mark.slow  # two fresh `lawam ingest` processes: their Ray workers must see the S3 settings
def test_an_s3_source_going_away_mid_run_is_retryable_and_quarantines_nothing(moto, tmp_path):
    clips = [make_video(tmp_path / "clips" / f"c{i:02d}.mp4", n_frames=30, fps=10, seed=i) for i in range(12)]
    upload(clips)
    store = str(tmp_path / "store")
    corpus = write_corpus(tmp_path / "corpus.yaml", "s3://lawam-faults/videos", store)
    env = {**os.environ, "LAWAM_PROGRESS_EVERY": "0.1"}
    cmd = [sys.executable, "-m", "flows.cli", "ingest", str(corpus), "--no-flow"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = []
    for line in proc.stderr:  # the plain progress lines: stop the server once an episode is done
        stderr.append(line)
        m = re.match(r"ingest: (\d+)/12 episodes", line)
        if m and int(m.group(1)) >= 1:
            moto.stop()
            break
    out, rest = proc.communicate(timeout=300)
    stderr.append(rest)
    errors = [ln for ln in "".join(stderr).splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1, "".join(stderr)[-3000:]
    assert len(errors) == 1 and "retry" in errors[0], "".join(stderr)[-3000:]
    assert "Traceback" not in "".join(stderr)
    kept = FeatureStore.open(store)
    catalog = kept.catalog().to_pylist()
    assert catalog and all(r["status"] == "ok" for r in catalog)  # finished episodes kept, none quarantined
    assert len(catalog) < 12
    # The server is back (moto keeps its data in the process: upload again); the re-run completes.
    moto.start()
    upload(clips)
    again = lawam("ingest", str(corpus), "--no-flow", "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"skipped {len(catalog)}" in again.stdout, again.stdout
    done = FeatureStore.open(store)
    assert len(done.episodes()) == 12 and all(r["status"] == "ok" for r in done.catalog().to_pylist())
