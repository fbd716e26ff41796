"""Prefect flows, run for real under Prefect's test harness (a temporary local server:
`prefect_server` in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import errno

import pyarrow.compute as pc
import pytest
from prefect.artifacts import Artifact

from flows.common import retry_on_infrastructure
from flows.ingest import ingest_source
from flows.refresh import refresh_corpus
from model.train_lam import train_lam
from pipeline.sources.base import SourceError
from pipeline.store import FeatureStore, StoreMismatchError, list_label_sets
from schemas import CorpusConfig, InfrastructureError, SamplingConfig, SourceSpec, StoreConfig
from schemas.config import LabelsConfig
from schemas.training import LamConfig
from tests.datasets import make_video
from tests.encoders import TINY

TINY_LAM = LamConfig.model_validate({
    "model": {"width": 32, "heads": 2, "idm_layers": 1, "fdm_layers": 1, "code_dim": 4},
    "optim": {"steps": 4, "batch_size": 16, "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 0},
    "pairs": {"k_seconds": 0.4, "heldout_fraction": 0.0},
})


def corpus(root, **kw) -> CorpusConfig:
    return CorpusConfig(sources=[SourceSpec(id="cam", kind="human", format="video_dir", uri=str(root / "v"))],
                        encoder=TINY, sampling=SamplingConfig(fps=5), store=StoreConfig(uri=str(root / "store")),
                        **kw)


def test_ingest_flow_commits_and_publishes_a_report(prefect_server, ray_local, tmp_path):
    for i in range(2):
        make_video(tmp_path / "v" / f"clip{i}.mp4", n_frames=20, fps=10, seed=i)
    (tmp_path / "v" / "broken.mp4").write_bytes(b"\x00" * 100)
    state = ingest_source(corpus(tmp_path), progress=False, return_state=True)
    assert state.is_completed()
    report = state.result()
    assert report.added == 2 and [k for k, _ in report.quarantined] == ["cam/broken.mp4"]
    assert FeatureStore.open(str(tmp_path / "store")).version == report.version_after

    artifact = Artifact.get("ingest-report")
    assert artifact is not None
    for text in ("episodes added | 2", "episodes quarantined | 1", "cam/broken.mp4", report.version_after):
        assert text in artifact.data
    table = Artifact.get("ingest-report-table")
    assert table is not None and table.type == "table"
    assert '"added": 2' in table.data and report.version_after in table.data and "frames/s" in table.data


def test_bad_input_fails_the_flow_without_retries(prefect_server, tmp_path):
    cfg = CorpusConfig(sources=[SourceSpec(id="cam", kind="human", format="video_dir", uri=str(tmp_path / "nope"))],
                       store=StoreConfig(uri=str(tmp_path / "store")))
    state = ingest_source(cfg, progress=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(SourceError, match="nope"):
        state.result()
    task_runs = asyncio.run(_task_runs(state.state_details.flow_run_id))
    assert [r.run_count for r in task_runs] == [1]  # the retry policy did not fire


def test_only_infrastructure_faults_are_retried():
    from prefect.states import Failed

    def retried(e: BaseException) -> bool:
        return retry_on_infrastructure(None, None, Failed(data=e))

    assert retried(InfrastructureError("object store: 503"))
    assert retried(ConnectionResetError(errno.ECONNRESET, "reset by peer"))
    assert not retried(StoreMismatchError("another encoder"))  # bad input
    assert not retried(ValueError("a bug"))
    assert not retried(RuntimeError("a bug"))
    assert not retried(OSError(errno.ENOSPC, "no space left"))  # a resource: a retry fails the same way


def test_refresh_ingests_then_labels_new_episodes(prefect_server, ray_local, one_thread, tmp_path):
    for i in range(3):
        make_video(tmp_path / "v" / f"clip{i}.mp4", n_frames=20, fps=10, seed=i)
    first = refresh_corpus(corpus(tmp_path))
    assert first.ingest.added == 3 and first.labels is None  # no LaWM named yet: ingest only
    uri = str(tmp_path / "store")
    train_lam(uri, tmp_path / "lam", TINY_LAM, progress=False, device="cpu")
    cfg = corpus(tmp_path, labels=LabelsConfig(lam=str(tmp_path / "lam")))

    make_video(tmp_path / "v" / "clip3.mp4", n_frames=20, fps=10, seed=3)
    second = refresh_corpus(cfg)
    assert second.ingest.added == 1 and second.ingest.skipped == 3
    assert second.labels.episodes == 4 and second.labels.version_before == second.ingest.version_after
    third = refresh_corpus(cfg)  # nothing new: nothing ingested, nothing labelled, no commit
    assert third.ingest.added == 0 and third.labels.episodes == 0 and third.labels.version_after is None
    store = FeatureStore.open(uri)
    assert store.version == second.labels.version_after
    [ls] = list_label_sets(store)
    assert ls.labelled == ls.episodes == 4 and ls.stale == 0

    md, table = Artifact.get("refresh-report"), Artifact.get("refresh-report-table")
    assert "Labels in" in md.data and "episodes labelled | 0" in md.data  # the latest run's
    assert '"stage": "label"' in table.data and '"stage": "ingest"' in table.data


def test_refresh_curates_new_episodes_when_the_corpus_names_a_curation_config(prefect_server, ray_local, tmp_path):
    import shutil

    import numpy as np

    from schemas.curation import CurationConfig
    from tests.datasets import write_frames

    rng = np.random.default_rng(0)
    (tmp_path / "v").mkdir()
    for i in range(3):  # a texture sliding at its own speed
        texture = rng.integers(0, 255, (24, 96, 3)).astype(np.uint8)
        frames = np.stack([np.roll(texture, (i + 1) * t, axis=1)[:, :32] for t in range(20)])
        write_frames(tmp_path / "v" / f"clip{i}.mp4", frames, 10)
    shutil.copyfile(tmp_path / "v" / "clip0.mp4", tmp_path / "v" / "copy.mp4")
    write_frames(tmp_path / "v" / "frozen.mp4", np.repeat(frames[:1], 20, axis=0), 10)
    cfg = corpus(tmp_path, curation=CurationConfig())
    first = refresh_corpus(cfg)
    assert first.ingest.added == 5 and first.curation.episodes == 5 and first.curation.duplicates == 1
    assert first.curation.version_before == first.ingest.version_after and first.curation.spans == 1
    md, table = Artifact.get("refresh-report"), Artifact.get("refresh-report-table")
    for text in ("Curation of", first.curation.set_id, "| cam |", "duplicate: `cam/copy.mp4`",
                 "static: `cam/frozen.mp4`"):
        assert text in md.data, text
    assert '"stage": "curate"' in table.data
    again = refresh_corpus(cfg)  # nothing new: nothing curated, no commit
    assert again.curation.episodes == 0 and again.curation.version_after is None


def _failures(uri: str, key: str) -> int:
    cat = FeatureStore.open(uri).catalog()
    keys = pc.binary_join_element_wise(cat["source"], cat["episode_id"], "/")
    return cat.filter(pc.equal(keys, key))["failures"][0].as_py()


def test_refresh_does_not_retry_an_unchanged_quarantined_file(prefect_server, tmp_path):
    """Needs the quarantine policy (catalog `failures`, `retry_quarantined`) of the ingest."""
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "broken.mp4").write_bytes(b"\x00" * 100)
    cfg, uri = corpus(tmp_path), str(tmp_path / "store")
    first = refresh_corpus(cfg)
    assert [k for k, _ in first.ingest.quarantined] == ["cam/broken.mp4"] and _failures(uri, "cam/broken.mp4") == 1
    again = refresh_corpus(cfg)
    assert again.ingest.version_after is None and _failures(uri, "cam/broken.mp4") == 1  # not tried again
    forced = refresh_corpus(cfg, retry_quarantined=True)
    assert [k for k, _ in forced.ingest.quarantined] == ["cam/broken.mp4"] and _failures(uri, "cam/broken.mp4") == 2


def test_refresh_retries_a_quarantined_file_once_it_changed(prefect_server, ray_local, tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "clip.mp4").write_bytes(b"\x00" * 100)
    cfg, uri = corpus(tmp_path), str(tmp_path / "store")
    first = refresh_corpus(cfg)
    assert [k for k, _ in first.ingest.quarantined] == ["cam/clip.mp4"]
    make_video(tmp_path / "v" / "clip.mp4", n_frames=20, fps=10, seed=0)  # fixed at the source
    fixed = refresh_corpus(cfg)
    assert fixed.ingest.added == 1 and not fixed.ingest.quarantined
    store = FeatureStore.open(uri)
    assert len(store) == 1 and store.catalog().num_rows == 1  # the row was replaced, not duplicated


async def _task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
