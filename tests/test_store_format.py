"""The store describes itself (docs/store-format.md): plain icechunk + zarr + pyarrow read it,
catalog.parquet/ carries where each episode lives and which commit it describes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq

from pipeline.store import FeatureStore, LabelWriter, StoreWriter
from pipeline.store.catalog_file import catalog_file_version
from tests.stores import ENCODER, SynthSource, episode_data, write_store

ROBOT, HUMAN = SynthSource("arm", fps=5.0, episodes=3), SynthSource("cam", kind="human", fps=4.0, episodes=2)

# Run with `python -I` from an empty folder: no PYTHONPATH, no project on sys.path, and lawam's
# packages refused, so only icechunk, zarr, pyarrow and numpy are used. Prints what it read.
PLAIN_READER = r'''
import json, sys
for ours in ("pipeline", "schemas", "model", "flows"):  # lawam is installed in this venv: refuse it
    sys.modules[ours] = None
import icechunk, numpy as np, pyarrow as pa, zarr

path, key = sys.argv[1], sys.argv[2]
repo = icechunk.Repository.open(icechunk.local_filesystem_storage(path + "/repo"))
root = zarr.open_group(repo.readonly_session(branch="main").store, mode="r")

def column(node):  # numbers, or strings in Arrow's layout: UTF-8 bytes and where each row starts
    if isinstance(node, zarr.Group):
        offsets = node["offsets"][:]
        return pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(node["data"][:]))
    return pa.array(node[:])

def live(group):  # a table's rows, but those a newer row superseded
    t = pa.table({name: column(node) for name, node in group["columns"].members()})
    dead = group["superseded"][:] if "superseded" in group else []
    return t.filter(~np.isin(np.arange(t.num_rows), dead))

index = live(root["index"])
keys = [f"{s}/{e}" for s, e in zip(index["source"].to_pylist(), index["episode_id"].to_pylist())]
row = index.slice(keys.index(key), 1).to_pylist()[0]
shard = root["shards/" + row["shard"]]
s, n, a, m = row["frame_start"], row["frames"], row["action_start"], row["actions"]
feats, ts = shard["features"], shard["timestamps"]
print(json.dumps({
    "features": feats[s : s + n].astype(float).tolist(),
    "timestamps": ts[s : s + n].tolist(),
    "actions": shard["actions"][a : a + m].tolist(),
    "state": shard["state"][a : a + m].tolist(),
    "dims": {k: list(shard[k].metadata.dimension_names) for k in ("features", "timestamps", "actions")},
    "codecs": [c.to_dict()["name"] for c in feats.metadata.codecs],
    "ts_attrs": dict(ts.attrs), "feat_attrs": dict(feats.attrs),
    "control_rate": shard["action_timestamps"].attrs["control_rate_hz"],
    "root": dict(root.attrs),
}))
'''


def test_plain_icechunk_and_zarr_read_an_episode_without_lawam(tmp_path):
    uri = str(tmp_path / "s")
    write_store(uri, [ROBOT, HUMAN])
    write_store(uri, [ROBOT], content="v2", only={"arm/ep001"})  # redone: its first row is superseded
    # faulthandler and RUST_BACKTRACE: a run of the suite saw this reader end in SIGABRT once, after
    # printing all it read, stderr empty (not reproduced in 48 runs 8 at a time): if it comes back,
    # the stacks say whose exit it was (icechunk's runtime threads at interpreter exit?).
    run = subprocess.run([sys.executable, "-I", "-X", "faulthandler", "-c", PLAIN_READER, uri, "arm/ep001"],
                         cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "ICECHUNK_LOG": "error", "RUST_BACKTRACE": "1"})
    assert run.returncode == 0, (run.returncode, run.stderr[-3000:], run.stdout[-300:])
    got = json.loads(run.stdout)
    f, ts, track = episode_data(ROBOT, 1)
    np.testing.assert_array_equal(np.array(got["features"], np.float16), f)
    np.testing.assert_array_equal(got["timestamps"], ts)
    np.testing.assert_array_equal(np.array(got["actions"], np.float32), track.actions)
    np.testing.assert_array_equal(np.array(got["state"], np.float32), track.state)
    assert got["dims"] == {"features": ["frame", "token", "channel"], "timestamps": ["frame"],
                           "actions": ["step", "action"]}
    assert got["codecs"][-1] == "crc32c"  # every chunk checksummed
    assert got["ts_attrs"]["units"] == "s" and got["ts_attrs"]["origin"] == "episode start"
    assert got["feat_attrs"]["sampling"] == {"fps": 5.0, "size": 32, "resize": "center_crop", "max_seconds": None}
    assert got["control_rate"] == 20.0
    root = got["root"]
    assert root["encoder"] == ENCODER.to_dict() and root["token_shape"] == [4, 16]
    sampling = {"size": 32, "resize": "center_crop", "max_seconds": None}
    assert root["sources"] == {"arm": {"kind": "robot", "sampling": {"fps": 5.0, **sampling}},
                               "cam": {"kind": "human", "sampling": {"fps": 4.0, **sampling}}}
    assert {"zarr", "icechunk", "numpy"} <= set(root["written_with"])


def test_catalog_parquet_says_where_each_episode_lives_and_which_commit_it_is(tmp_path):
    uri = str(tmp_path / "s")
    v1 = write_store(uri, [ROBOT])
    v2 = write_store(uri, [HUMAN])
    table = pq.read_table(tmp_path / "s" / "catalog.parquet")  # a folder of parts, one per ingest commit
    assert catalog_file_version(uri) == v2
    rows = {f"{r['source']}/{r['episode_id']}": r for r in table.to_pylist()}
    assert {k: r["store_version"] for k, r in rows.items()} == {
        **{f"arm/ep{i:03d}": v1 for i in range(3)}, **{f"cam/ep{i:03d}": v2 for i in range(2)}}
    store = FeatureStore.open(uri)
    for key, r in rows.items():
        assert r["fps"] == (5.0 if key.startswith("arm") else 4.0)
        root_feats = store.root[f"shards/{r['shard']}/features"]
        np.testing.assert_array_equal(root_feats[r["frame_start"] : r["frame_start"] + r["frames"]],
                                      store.features(key))
    catalog = store.catalog()  # the same table (Parquet stores the second-precision timestamps as ms)
    assert catalog.equals(table.replace_schema_metadata(None).cast(catalog.schema))
    v3 = write_store(uri, [ROBOT], content="v3", only={"arm/ep001"})  # one redone episode: its part is rewritten
    table = pq.read_table(tmp_path / "s" / "catalog.parquet")
    assert catalog_file_version(uri) == v3 and table.num_rows == 5
    redone = [r for r in table.to_pylist() if (r["source"], r["episode_id"]) == ("arm", "ep001")]
    assert [r["store_version"] for r in redone] == [v3]
    assert FeatureStore.open(uri).catalog().equals(table.replace_schema_metadata(None).cast(catalog.schema))


def test_a_label_commit_does_not_claim_the_ingested_rows(tmp_path):
    uri = str(tmp_path / "s")
    v1 = write_store(uri, [ROBOT])
    store = FeatureStore.open(uri)
    with LabelWriter.open(uri, "lam-x", {"dim": 2}) as lw:
        lw.put("arm/ep000", store.episodes()["content_hash"][0].as_py(), np.zeros((19, 2)), k_frames=1)
        v_label = lw.commit("labels")
    tip = FeatureStore.open(uri)
    assert tip.version == v_label
    assert set(tip.catalog()["store_version"].to_pylist()) == {v1}
    table = pq.read_table(tmp_path / "s" / "catalog.parquet")  # names the newest commit, as documented
    assert catalog_file_version(uri) == v_label
    assert set(table["store_version"].to_pylist()) == {v1}


def test_a_stale_catalog_parquet_is_repaired_by_a_no_op_run(tmp_path):
    uri = str(tmp_path / "s")
    write_store(uri, [ROBOT])
    shutil.copytree(tmp_path / "s" / "catalog.parquet", tmp_path / "old.parquet")
    v2 = write_store(uri, [HUMAN])
    v3 = write_store(uri, [ROBOT], content="v2", only={"arm/ep000"})
    shutil.rmtree(tmp_path / "s" / "catalog.parquet")
    shutil.copytree(tmp_path / "old.parquet", tmp_path / "s" / "catalog.parquet")  # killed before the copy
    v4 = write_store(uri, [ROBOT], content="v3", only={"arm/ep001"})  # its commit rewrites every part
    assert catalog_file_version(uri) == v4 != v3 != v2
    table = pq.read_table(tmp_path / "s" / "catalog.parquet")
    assert table.num_rows == 5 and set(table["source"].to_pylist()) == {"arm", "cam"}
    shutil.rmtree(tmp_path / "s" / "catalog.parquet")
    shutil.copytree(tmp_path / "old.parquet", tmp_path / "s" / "catalog.parquet")
    with StoreWriter.open(uri, encoder=ENCODER) as w:  # a no-op run repairs it too
        assert w.commit("nothing new") is None
    assert catalog_file_version(uri) == v4
    assert pq.read_table(tmp_path / "s" / "catalog.parquet").equals(table)


def test_the_root_version_opens_as_an_empty_store(tmp_path):
    uri = str(tmp_path / "s")
    write_store(uri, [ROBOT])
    root = FeatureStore.open(uri).versions()[-1]
    empty = FeatureStore.open(uri, version=root.id)
    assert len(empty) == 0 and empty.catalog().num_rows == 0
