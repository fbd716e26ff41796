"""Prefect flows, run for real under Prefect's test harness (a temporary local server)."""

from __future__ import annotations

import asyncio

import pytest
from prefect.artifacts import Artifact
from prefect.testing.utilities import prefect_test_harness

from flows.ingest import ingest_source, is_transient
from pipeline.sources.base import SourceError
from pipeline.store import FeatureStore, StoreMismatchError
from schemas import CorpusConfig, EncoderConfig, SamplingConfig, SourceSpec, StoreConfig
from tests.datasets import make_video


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_ingest_flow_commits_and_publishes_a_report(prefect_server, ray_local, tmp_path):
    for i in range(2):
        make_video(tmp_path / "v" / f"clip{i}.mp4", n_frames=20, fps=10, seed=i)
    (tmp_path / "v" / "broken.mp4").write_bytes(b"\x00" * 100)
    cfg = CorpusConfig(
        sources=[SourceSpec(id="cam", kind="human", format="video_dir", uri=str(tmp_path / "v"))],
        encoder=EncoderConfig(model="vit_tiny_patch16_224", image_size=32, tokens="mean", batch_size=8),
        sampling=SamplingConfig(fps=5), store=StoreConfig(uri=str(tmp_path / "store")),
    )
    state = ingest_source(cfg, progress=False, return_state=True)
    assert state.is_completed()
    report = state.result()
    assert report.added == 2 and [k for k, _ in report.quarantined] == ["cam/broken.mp4"]
    assert FeatureStore.open(str(tmp_path / "store")).version == report.version_after

    artifact = Artifact.get("ingest-report")
    assert artifact is not None
    for text in ("episodes added | 2", "episodes quarantined | 1", "cam/broken.mp4", report.version_after):
        assert text in artifact.data


def test_bad_input_fails_the_flow_without_retries(prefect_server, tmp_path):
    cfg = CorpusConfig(sources=[SourceSpec(id="cam", kind="human", format="video_dir", uri=str(tmp_path / "nope"))],
                       store=StoreConfig(uri=str(tmp_path / "store")))
    state = ingest_source(cfg, progress=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(SourceError, match="nope"):
        state.result()
    task_runs = asyncio.run(_task_runs(state.state_details.flow_run_id))
    assert [r.run_count for r in task_runs] == [1]  # the retry policy did not fire


def test_infrastructure_faults_are_retried():
    from prefect.states import Failed

    assert is_transient(None, None, Failed(data=RuntimeError("ray worker died")))
    assert not is_transient(None, None, Failed(data=StoreMismatchError("another encoder")))


async def _task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
