"""A damaged store is an error naming the episode, never wrong numbers; `lawam verify` finds
every damaged episode; `lawam gc` reclaims space and keeps tagged versions and the tip."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipeline.store import FeatureStore, StoreError
from pipeline.store.catalog_file import catalog_file_version
from pipeline.store.maintenance import gc_store
from pipeline.store.reader import StoreCorruptError
from tests.stores import SynthSource, chunk_files, episode_data, write_store

runner = CliRunner()
ARM = SynthSource("arm", fps=8.0, episodes=4, seconds=4.0)  # 32 frames an episode: two in a chunk of 64


def damaged_store(tmp_path, how: str) -> tuple[str, str]:
    """A one-commit store whose largest chunk file (a features chunk) is damaged `how`."""
    uri = str(tmp_path / "s")
    version = write_store(uri, [ARM], chunk_frames=64)
    gc_store(uri, timedelta(0))  # only chunks the commit references are left: one of them is hit
    target = max(chunk_files(uri), key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    rng = np.random.default_rng(7)
    if how == "whole":
        data = bytearray(rng.integers(0, 256, len(data), dtype=np.uint8).tobytes())
    else:  # 64 bytes in the middle
        mid = len(data) // 2
        data[mid : mid + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return uri, version


@pytest.mark.parametrize("how", ["whole", "middle"])
def test_a_damaged_chunk_is_an_error_naming_the_episode_and_verify_lists_it(tmp_path, how):
    uri, version = damaged_store(tmp_path, how)
    result = runner.invoke(app, ["verify", uri, "--no-progress"])
    assert result.exit_code == 4, result.output
    store = FeatureStore.open(uri)
    named = {k for k in store.keys if f"{k} (shard" in result.output}
    assert len(named) == 2, result.output  # the two episodes of the damaged features chunk
    for key in store.keys:  # every episode reads back exactly or fails naming itself: no wrong numbers
        i = int(key[-3:])
        if key in named:
            with pytest.raises(StoreCorruptError) as err:
                store.features(key)
            msg = str(err.value)
            assert key in msg and version in msg and store.episodes()["shard"][0].as_py() in msg
            assert "\n" not in msg
        else:
            np.testing.assert_array_equal(store.features(key), episode_data(ARM, i)[0])


def test_gc_keeps_tagged_versions_and_the_tip_deletes_the_rest_and_repairs_the_catalog(tmp_path):
    uri = str(tmp_path / "s")
    v1 = write_store(uri, [ARM])
    shutil.copytree(Path(uri) / "catalog.parquet", tmp_path / "stale")
    v2 = write_store(uri, [ARM], content="v2")  # every episode redone: v1's chunks only v1 needs
    v3 = write_store(uri, [ARM], content="v3")
    shutil.rmtree(Path(uri) / "catalog.parquet")
    shutil.copytree(tmp_path / "stale", Path(uri) / "catalog.parquet")  # as if killed between commit and copy
    before = len(chunk_files(uri))
    assert runner.invoke(app, ["tag", uri, v1, "run-1"]).exit_code == 0
    dry = runner.invoke(app, ["gc", uri, "--older-than", "7d"])
    assert dry.exit_code == 0 and "0 versions expired" in dry.output  # everything is younger than 7 days
    result = runner.invoke(app, ["gc", uri, "--older-than", "0"])
    assert result.exit_code == 0, result.output
    assert len(chunk_files(uri)) < before
    for v in (v1, "run-1", v3):
        store = FeatureStore.open(uri, v)
        for i in range(ARM.episodes):
            np.testing.assert_array_equal(store.features(f"arm/ep{i:03d}"), episode_data(ARM, i)[0])
    with pytest.raises(StoreError, match="no version"):
        FeatureStore.open(uri, v2)
    assert catalog_file_version(uri) == v3  # repaired
    listed = runner.invoke(app, ["versions", uri])
    assert "run-1" in listed.output and v1 in listed.output and v3 in listed.output
    assert runner.invoke(app, ["verify", uri, "--no-progress"]).exit_code == 0
    assert runner.invoke(app, ["verify", uri, "--version", "run-1", "--no-progress"]).exit_code == 0
    again = runner.invoke(app, ["tag", uri, v3, "run-1"])
    assert again.exit_code == 2 and "already has a tag" in again.output


def test_verify_names_an_episode_whose_index_row_outruns_its_shard(tmp_path):
    """Frame counts are checked against the shard: an index claiming more frames than stored."""
    import numpy as np
    import pyarrow as pa
    import zarr

    from pipeline.store import index as episode_index
    from pipeline.store.backend import open_repo

    uri = str(tmp_path / "s")
    write_store(uri, [ARM])
    repo = open_repo(uri, create=False)
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="a")
    index = episode_index.EpisodeIndex(root, repo, session.snapshot_id)
    last = index.read(rows=np.array([index.rows - 1]))  # arm/ep003's row, rewritten claiming 5 more frames
    bad = last.set_column(last.schema.get_field_index("frames"), "frames", pa.array([last["frames"][0].as_py() + 5]))
    episode_index.append(root, bad, np.array([index.rows - 1]), index.batches()[1][-1])
    session.commit("a bad index", metadata={"lawam_run": "test", episode_index.ROWS_KEY: index.rows + 1})
    result = runner.invoke(app, ["verify", uri, "--no-progress"])
    assert result.exit_code == 4
    assert "arm/ep003 (shard" in result.output and "features has 128 rows" in result.output
    assert "arm/ep000" not in result.output
