"""What a failure means decides what the run does (`schemas.errors`, `pipeline.errors`): bad input
is quarantined, config exits 2, infrastructure is retried, resource stops in one line, a bug
fails loudly. Real failures here: real files, a real S3 API server switched off, a real lock."""

from __future__ import annotations

import errno
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.decode import CorruptVideoError, MissingVideoError, decode_frames
from pipeline.encode import EncoderError
from pipeline.errors import classify, is_retryable
from pipeline.sources import EpisodeError, SourceError, iter_episodes
from pipeline.store import FeatureStore, StoreBusyError, StoreError, StoreMismatchError
from pipeline.store.backend import WriterLock
from schemas import ConfigError, SamplingConfig, SourceSpec, StoreConfig
from tests.datasets import make_video
from tests.s3server import s3_server, upload
from tests.test_faults import TINY, write_corpus

runner = CliRunner()


@pytest.fixture
def moto(monkeypatch):
    yield from s3_server(monkeypatch)


@pytest.mark.parametrize(("error", "kind"), [
    (CorruptVideoError("v.mp4: truncated"), "bad_input"),
    (MissingVideoError("v.mp4: gone"), "bad_input"),
    (EpisodeError("demo_3: no actions"), "bad_input"),
    (SourceError("videos/: no such folder"), "config"),
    (StoreError("no feature store at 's'"), "config"),
    (StoreMismatchError("another encoder"), "config"),
    (EncoderError("unknown timm model"), "config"),
    (StoreBusyError("another process is writing"), "infrastructure"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "infrastructure"),
    (OSError(errno.EIO, "Input/output error"), "infrastructure"),
    (OSError(errno.ENOSPC, "No space left on device"), "resource"),
    (OSError(errno.EROFS, "Read-only file system"), "resource"),
    (OSError(errno.EFBIG, "File too large"), "resource"),
    (KeyError("frames"), "bug"),
    (ValueError("an unchecked value"), "bug"),
])
def test_our_errors_and_foreign_faults_sort_into_one_hierarchy(error: BaseException, kind: str) -> None:
    assert classify(error) == kind
    assert is_retryable(error) == (kind == "infrastructure")
    if kind in ("bad_input", "config"):
        assert isinstance(error, ValueError)  # callers that catch ValueError still do


def test_every_domain_error_is_in_the_hierarchy_and_exits_by_its_kind() -> None:
    """Incident: CheckpointError, SelectionError, EvalError, SampleError and MetricsInputError
    were plain ValueErrors, which `classify` calls bugs: the CLI caught them by hand, 13 times."""
    from flows.serve import ServerError
    from model.checkpoint import CheckpointError
    from model.distill import SelectionError
    from model.metrics import MetricsInputError
    from pipeline.errors import exit_code
    from pipeline.evaluation.evaluate import EvalError, LayoutOverlapError
    from pipeline.samples import SampleError
    from pipeline.samples.lerobot_v3 import LeRobotWriteError
    from pipeline.store import StoreCorruptError

    for cls in (CheckpointError, SelectionError, MetricsInputError, EvalError, LayoutOverlapError, SampleError,
                LeRobotWriteError):
        assert classify(cls("x")) == "config" and exit_code(cls("x")) == 2, cls
    assert classify(StoreCorruptError("x")) == "resource" and exit_code(StoreCorruptError("x")) == 4
    assert classify(ServerError("x")) == "infrastructure" and exit_code(ServerError("x")) == 1


def test_a_checksum_mismatch_advises_verify_restore_or_reingest_not_free_space() -> None:
    """Incident: a damaged chunk's exit-4 line said "free space or make the store writable"."""
    from pipeline.errors import explain
    from pipeline.store import StoreCorruptError

    line = explain(StoreCorruptError("store 's' version V: episode a/1 (shard x, features) cannot be read: crc"))
    assert line.startswith("store 's' version V: episode a/1") and "lawam verify" in line
    assert "restore" in line and "re-ingest" in line and "free space" not in line
    assert "free space" in explain(OSError(errno.ENOSPC, "No space left on device"))


def test_one_line_follows_a_wrapped_cause_to_the_error_worth_showing() -> None:
    from pipeline.errors import one_line

    try:
        try:
            raise CorruptVideoError("v.mp4: cannot decode frame 3\n  ffmpeg says ...")
        except CorruptVideoError as inner:
            raise RuntimeError("decode task failed") from inner
    except RuntimeError as outer:
        assert one_line(outer) == "v.mp4: cannot decode frame 3"
    assert one_line(KeyError("frames")) == "KeyError: 'frames'"


def test_a_bad_or_missing_video_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("not a video\n")
    with pytest.raises(CorruptVideoError) as bad:
        list(decode_frames(str(tmp_path / "notes.mp4"), fps=5, size=16))
    with pytest.raises(FileNotFoundError) as missing:  # still a FileNotFoundError for callers testing for one
        list(decode_frames(str(tmp_path / "gone.mp4"), fps=5, size=16))
    assert classify(bad.value) == classify(missing.value) == "bad_input"
    assert isinstance(missing.value, MissingVideoError) and "\n" not in str(missing.value)


def test_a_video_on_a_server_that_went_away_is_not_called_corrupt(moto, tmp_path: Path) -> None:
    clip = make_video(tmp_path / "c.mp4", n_frames=20, fps=10)
    upload([clip])
    uri = "s3://lawam-faults/videos/c.mp4"
    assert sum(len(b) for b in decode_frames(uri, fps=5, size=16)) == 10  # 2 s at 5 fps
    moto.stop()
    with pytest.raises(Exception) as failure:  # noqa: PT011 - the point is which kind it is
        list(decode_frames(uri, fps=5, size=16))
    assert not isinstance(failure.value, CorruptVideoError), failure.value
    assert classify(failure.value) == "infrastructure" and is_retryable(failure.value)


def test_the_reader_calls_only_a_missing_version_a_store_error(moto, tmp_path: Path) -> None:
    from tests.stores import SynthSource, write_store

    store = str(tmp_path / "store")
    write_store(store, [SynthSource("bot", episodes=1, seconds=1.0)])
    with pytest.raises(StoreError) as unknown:
        FeatureStore.open(store, version="ABCDEFGHJKMNPQRSTVWX")
    assert classify(unknown.value) == "config"
    upload([])  # the bucket
    write_store("s3://lawam-faults/store", [SynthSource("bot", episodes=1, seconds=1.0)])
    version = FeatureStore.open("s3://lawam-faults/store").version
    moto.stop()
    with pytest.raises(Exception) as failure:  # noqa: PT011 - the point is which kind it is
        FeatureStore.open("s3://lawam-faults/store", version=version)
    assert not isinstance(failure.value, StoreError), failure.value
    assert classify(failure.value) == "infrastructure"


def test_a_store_held_by_another_writer_is_one_line_exit_1_retry(tmp_path: Path) -> None:
    from flows.cli import app

    make_video(tmp_path / "videos" / "v0.mp4", n_frames=20, fps=10)
    store = str(tmp_path / "store")
    corpus = write_corpus(tmp_path / "corpus.yaml", str(tmp_path / "videos"), store)
    # another writer, making the store (a lock is per open file, so this process counts as one)
    with WriterLock(store, create=True):
        result = runner.invoke(app, ["ingest", str(corpus), "--no-flow", "--no-progress"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "another process is writing" in lines[0] and "retry" in lines[0]


def test_a_config_error_is_never_retried() -> None:
    err = ConfigError("corpus.yaml: encoder.model: field required")
    assert classify(err) == "config" and not is_retryable(err)


def test_a_bug_in_a_decode_task_stops_the_run_and_quarantines_nothing(ray_local, tmp_path: Path) -> None:
    from pipeline.ingest import ingest_episodes

    for i in range(2):
        make_video(tmp_path / "videos" / f"v{i}.mp4", n_frames=20, fps=10, seed=i)
    refs = list(iter_episodes(SourceSpec(id="vids", kind="human", format="video_dir", uri=str(tmp_path / "videos"))))
    refs[1] = replace(refs[1], start_s="0")  # a str where a float belongs: our bug, not the video's
    store = str(tmp_path / "store")
    with pytest.raises(TypeError) as failure:
        ingest_episodes(refs, encoder=TINY, sampling=SamplingConfig(fps=5), store=StoreConfig(uri=store),
                        progress=False)
    assert classify(failure.value) == "bug" and not is_retryable(failure.value)
    try:
        catalog = FeatureStore.open(store).catalog().to_pylist()
    except StoreError:  # nothing was complete before the failure: nothing committed
        catalog = []
    assert all(r["status"] == "ok" for r in catalog)  # the failure quarantined nothing
