"""Store layout 2 (docs/store-format.md): append-only tables, so a commit costs what it adds, and
stores written by an older lawam keep working.

The incident: at a million episodes every commit rewrote the whole index, files table and label
index (14 s), and every open read them whole through Python lists (15.6 s, 1 GB per DataLoader
worker). benchmarks/bench_scale.py measures the costs; these tests pin the behaviour behind them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from typer.testing import CliRunner

from flows.cli import app
from pipeline.store import CurationSet, FeatureStore, LabelSet, LabelWriter, StoreMismatchError, StoreWriter
from pipeline.store import table as tables
from pipeline.store.backend import open_repo
from pipeline.store.catalog_file import catalog_file_version
from pipeline.store.files import committed_files
from pipeline.store.pairs import HELDOUT_SPLITS, heldout_mask, is_heldout
from schemas import STORE_LAYOUT_VERSION
from schemas.errors import BadInputError
from schemas.identity import SamplingParams
from schemas.records import EpisodeRef
from tests.stores import ENCODER, SynthSource, write_store

V1 = Path(__file__).parent / "fixtures_store_v1"
ARM = SynthSource("arm", fps=5.0, episodes=6, seconds=1.0)
runner = CliRunner()


def _catalog(store: FeatureStore) -> list[dict]:
    """The catalog as make_fixture.py spelled it in expected.json."""
    return [{k: (str(v) if k in ("failed_since", "ingested_at") else v) for k, v in r.items()}
            for r in store.catalog().to_pylist()]


def test_a_layout_1_store_reads_as_written_and_its_first_writer_migrates_it_in_one_commit(tmp_path):
    """The fixture (make_fixture.py) holds episodes, a redone one, a quarantined one, the files
    table, a label set and a curation set, as main's layout-1 code wrote them."""
    uri = str(tmp_path / "store")
    shutil.copytree(V1 / "store", uri)
    expected = json.loads((V1 / "expected.json").read_text())
    v = expected["versions"]
    cur = expected["curation"]
    old = FeatureStore.open(uri)  # read as it is, every version
    assert old.version == v["v6"] and _catalog(old) == expected["catalog"]
    assert FeatureStore.open(uri, v["v1"]).keys.tolist() == expected["v1_keys"]
    assert LabelSet.open(old, "lam-000000000001").labelled == len(old) - 1
    assert sorted(CurationSet.open(old, "cur-000000000001").keys) == cur["keys"]

    with StoreWriter.open(uri, encoder=ENCODER) as w:  # the first writer migrates, in a commit of its own
        assert w.parent_version != v["v5"]
        assert w.commit("nothing new") is None
    store = FeatureStore.open(uri)
    assert store.versions()[0].message == f"migrate the store to layout {STORE_LAYOUT_VERSION}"
    assert store.versions()[1].id == v["v6"] and store.attrs["lawam_layout"] == STORE_LAYOUT_VERSION
    assert _catalog(store) == expected["catalog"]  # every row, the commit that added it, where it lives
    for key, digest in expected["features_sha256"].items():
        assert hashlib.sha256(store.features(key).tobytes()).hexdigest() == digest
    labels = LabelSet.open(store, "lam-000000000001")
    assert labels.labelled == len(store) - 1 and "cam/ep001" not in labels
    np.testing.assert_array_equal(labels.episode("arm/ep001"), np.full((9, 2), len("arm/ep001"), np.float32))
    curation = CurationSet.open(store, "cur-000000000001")  # a curation set, as its own (layout-1) reader read it
    assert sorted(curation.keys) == cur["keys"] and curation.dropped_duplicates().tolist() == cur["dropped"]
    assert {k: [list(s) for s in curation.spans(k)] for k in cur["keys"]} == cur["spans"]
    assert {k: curation.motion(k).tolist() for k in cur["keys"]} == cur["motion"]
    assert committed_files(uri)["uri"].to_pylist() == ["/synth/cam/broken.mp4"]
    assert _catalog(FeatureStore.open(uri, v["v6"])) == expected["catalog"]  # the old version is still there
    assert catalog_file_version(uri) == store.version  # the single-file catalog became the folder of parts
    assert pq.read_table(Path(uri) / "catalog.parquet").num_rows == len(expected["catalog"])

    v6 = write_store(uri, [SynthSource("arm", fps=5.0, episodes=3, seconds=2.0)], content="v3", only={"arm/ep000"})
    after = FeatureStore.open(uri)
    assert after.catalog().num_rows == len(expected["catalog"])  # redone in place of its old row
    assert {r["episode_id"]: r["store_version"] for r in after.catalog().to_pylist()}["ep000"] == v6
    assert "arm/ep000" not in LabelSet.open(after, "lam-000000000001")  # its labels are stale now
    assert "arm/ep000" not in CurationSet.open(after, "cur-000000000001")  # and its curation rows
    assert CurationSet.open(after, "cur-000000000001").spans("arm/ep002") == [(1, 3, "static")]
    assert runner.invoke(app, ["verify", uri, "--no-progress"]).exit_code == 0


def test_a_store_of_a_newer_layout_is_refused_in_one_line(tmp_path):
    uri = str(tmp_path / "s")
    write_store(uri, [ARM])
    repo = open_repo(uri, create=False)
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a").attrs["lawam_layout"] = STORE_LAYOUT_VERSION + 1
    session.commit("from the future")
    for attempt in (lambda: FeatureStore.open(uri), lambda: StoreWriter.open(uri, encoder=ENCODER)):
        with pytest.raises(StoreMismatchError, match="upgrade lawam") as err:
            attempt()
        assert "\n" not in str(err.value)  # a ConfigError: the CLI prints it and exits 2


def test_a_commit_appends_and_rewrites_no_stored_index_chunk(tmp_path, monkeypatch):
    """What makes a commit O(new): of the tables, only each column's last chunk is written."""
    monkeypatch.setattr(tables, "_CHUNK_ROWS", 4)
    monkeypatch.setattr(tables, "_CHUNK_BYTES", 64)
    uri = str(tmp_path / "s")
    v1 = write_store(uri, [ARM])
    labels = FeatureStore.open(uri)
    with LabelWriter.open(uri, "lam-x", {"dim": 2}) as lw:
        for key, h in zip(labels.keys, labels.episodes(["content_hash"])["content_hash"].to_pylist(), strict=True):
            lw.put(key, h, np.zeros((4, 2)), 1)
        v2 = lw.commit("labels")
    v3 = write_store(uri, [ARM], content="v2", only={"arm/ep005"})  # redo the last episode
    diff = open_repo(uri, create=False).diff(from_snapshot_id=v2, to_snapshot_id=v3)
    index = {path: sorted(c[0] for c in chunks) for path, chunks in diff.updated_chunks.items()
             if path.startswith("/index/columns/") and not path.endswith("/data")}
    assert index and all(chunks == [1] for path, chunks in index.items() if not path.endswith("/offsets")), index
    assert all(chunks[0] >= 1 for path, chunks in index.items())  # 6 rows + 1: chunk 0 (rows 0-3) untouched
    assert not any(p.startswith("/labels/") for p in diff.updated_chunks)  # nor another table
    store = FeatureStore.open(uri)
    assert len(store) == 6 and store._index.rows == 7 and list(store._index.superseded) == [5]
    assert store.catalog()["store_version"].to_pylist() == [v1] * 5 + [v3]
    assert "arm/ep005" not in LabelSet.open(store, "lam-x") and "arm/ep004" in LabelSet.open(store, "lam-x")
    with LabelWriter.open(uri, "lam-x", {"dim": 2}) as lw:  # relabelled: the newest label row wins
        assert lw.todo(store) == ["arm/ep005"]
        lw.put("arm/ep005", store.episodes(["content_hash"])["content_hash"][5].as_py(), np.ones((4, 2)), 1)
        lw.commit("relabel")
    np.testing.assert_array_equal(LabelSet.open(FeatureStore.open(uri), "lam-x").episode("arm/ep005"), np.ones((4, 2)))
    edited = EpisodeRef(source="arm", episode_id="ep004", kind="robot", uri="/synth/arm/4", content_hash="v1-arm-4",
                        instruction="an edited instruction")
    with StoreWriter.open(uri, encoder=ENCODER) as w:  # its row is rewritten, its features and labels stay
        assert w.plan([edited], lambda ref: SamplingParams(fps=5.0, size=32)).retitled == [edited]
        w.commit("retitle")
    store = FeatureStore.open(uri)
    assert store.episode("arm/ep004").instruction == "an edited instruction"
    assert "arm/ep004" in LabelSet.open(store, "lam-x") and LabelSet.open(store, "lam-x").stale == 0


def test_a_key_hash_collision_is_refused_not_merged(tmp_path, monkeypatch):
    """Two keys with one 64-bit hash (about 1 in 10^7 at a million episodes) must never let one
    episode's row replace the other's."""
    import pipeline.store.writer as writer_module

    uri = str(tmp_path / "s")
    write_store(uri, [ARM], only={"arm/ep000"})
    monkeypatch.setattr(writer_module, "key_hashes",
                        lambda keys: np.full(len(list(keys)), tables.key_hash("arm/ep000"), np.uint64))
    with pytest.raises(BadInputError, match="same 64-bit key hash as 'arm/ep000'"):
        write_store(uri, [ARM], only={"arm/ep001"})
    assert FeatureStore.open(uri).keys.tolist() == ["arm/ep000"]


def test_vectorised_hashes_and_splits_match_their_one_by_one_definitions():
    params = SamplingParams(fps=5.0, size=32, max_seconds=3.5)
    contents = ["abc", 'quo"te\\back', "é ü ☃", "\x00", "v1-1"]
    assert [params.ingest_hasher()(c) for c in contents] == [params.ingest_hash(c) for c in contents]
    keys = [f"s{i % 3}/ep{i}" for i in range(400)]
    splits = [("val" if i % 7 == 0 else "train") if i % 3 == 0 else (None if i % 2 else "Train") for i in range(400)]
    import pyarrow as pa

    sources = np.array([i % 3 for i in range(400)])
    got = heldout_mask(tables.key_hashes(keys), sources, pa.array(splits, pa.string()), 0.3)
    own = {0}  # only source s0 names held-out episodes itself
    want = [is_heldout(k, sp, 0.3, i % 3 in own) for i, (k, sp) in enumerate(zip(keys, splits, strict=True))]
    assert got.tolist() == want and 0 < sum(want) < 400 and "val" in HELDOUT_SPLITS
