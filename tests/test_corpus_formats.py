"""The corpora the field pretrains on, ingested as they ship: one corpus of an RLDS dataset written
by tensorflow-datasets (OXE-style, with a damaged record, an undecodable JPEG and a file that is
no TFRecord), DROID-style RLDS, webdataset shards written by the `webdataset` library (one cut
mid-member, one with member names leaving the shard), EPIC-KITCHENS' CSV and SSv2's JSON, into a
real store (the local executor: the same readers and decode as a Ray decode task runs). Then the
refresh: unchanged shards are not opened, a new shard is the only one read."""

from __future__ import annotations

import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.ingest import ingest_corpus
from pipeline.sources import hashing
from pipeline.store import FeatureStore
from schemas import CorpusConfig, SamplingConfig, SourceSpec, StoreConfig
from tests.datasets import make_hostile_tar, make_video, make_webdataset, rewrite_rlds_record, tfrecord_records
from tests.encoders import TINY
from tests.test_manifests import EPIC_COLUMNS, MANIFESTS
from tests.test_refresh import lawam_ingest_in_a_fresh_process
from tests.test_rlds import DROID, OXE, SHARD

HELD_BACK = "oxe_tiny-val.tfrecord-00001-of-00002"  # added by the refresh test: a new shard


def _corpus(root: Path) -> CorpusConfig:
    """Sources under `root`, each with its own damage (see the module docstring)."""
    oxe = root / "oxe_tiny" / "1.0.0"
    shutil.copytree(OXE, oxe, ignore=shutil.ignore_patterns(HELD_BACK))
    second = tfrecord_records(oxe / SHARD)[1]  # episode 3: a flipped byte, its CRC fails
    data = bytearray((oxe / SHARD).read_bytes())
    data[second.offset + 12 + 50] ^= 0xFF
    (oxe / SHARD).write_bytes(bytes(data))
    rewrite_rlds_record(oxe / "oxe_tiny-train.tfrecord-00001-of-00002", 0,  # episode 1: step 2 is no JPEG
                   lambda ex: ex.features.feature["steps/observation/image"].bytes_list.value.__setitem__(2, b"junk"))
    (oxe / "oxe_tiny-train.tfrecord-00002-of-00003").write_bytes(b"not a tfrecord" * 10)

    web = make_webdataset(root / "web", (2, 3))
    with tarfile.open(web / "00001.tar") as tar:
        cut = tar.getmember("000010001.mp4")
    (web / "00001.tar").write_bytes((web / "00001.tar").read_bytes()[: cut.offset_data + 200])
    make_hostile_tar(web / "00002.tar", make_video(root / "v.mp4", n_frames=4).read_bytes())

    epic = root / "EPIC-KITCHENS"
    for participant, video in (("P01", "P01_01"), ("P02", "P02_03")):
        make_video(epic / participant / "videos" / f"{video}.MP4", n_frames=40, fps=10, seed=len(video))
    ssv2 = root / "ssv2"
    for i, vid in enumerate(("78687", "42326")):
        make_video(ssv2 / f"{vid}.webm", n_frames=6, fps=12, codec="libvpx-vp9", seed=i)
    return CorpusConfig(
        name="field",
        sources=[
            SourceSpec(id="oxe", kind="robot", format="rlds", uri=str(root / "oxe_tiny"), action_rate=10),
            SourceSpec(id="droid", kind="robot", format="rlds", uri=str(DROID), action_rate=15,
                       cameras=["exterior_image_1_left"], action_fields=["action"],
                       state_fields=["observation/joint_position"]),
            SourceSpec(id="web", kind="human", format="webdataset", uri=str(web)),
            SourceSpec(id="epic", kind="human", format="video_dir", uri=str(epic), instruction_field="narration",
                       manifest=str(MANIFESTS / "EPIC_100_train.csv"), columns=EPIC_COLUMNS),
            SourceSpec(id="ssv2", kind="human", format="video_dir", uri=str(ssv2), instruction_field="label",
                       manifest=str(MANIFESTS / "something-something-v2-train.json"),
                       columns={"file": "{id}.webm", "id": "id"}),
        ],
        encoder=TINY, sampling=SamplingConfig(fps=5), store=StoreConfig(uri=str(root / "store")))


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory):
    """(corpus, root, report of the first ingest). The racy window is short, so the copied files
    are trusted by the refreshes below."""
    mp = pytest.MonkeyPatch()
    mp.setattr(hashing, "RACY_WINDOW_S", 0.3)
    root = tmp_path_factory.mktemp("field")
    cfg = _corpus(root)
    time.sleep(0.4)
    hashing.clear_cache()
    report = ingest_corpus(cfg, progress=False, executor="local")
    yield cfg, root, report
    mp.undo()


def test_every_format_ingests_and_each_bad_input_is_one_quarantined_episode(field) -> None:
    _, _, report = field
    reasons = dict(report.quarantined)
    hostile = [k for k in reasons if k.startswith("web/00002/refused-")]
    assert sorted(set(reasons) - set(hostile)) == [
        "oxe/data/raw/train/episode_1.npy", "oxe/oxe_tiny-train.tfrecord-00000-of-00002/1",
        "oxe/oxe_tiny-train.tfrecord-00002-of-00003", "web/00001/000010001"]
    assert len(hostile) == 3 and all("never extracted" in reasons[k] for k in hostile)
    assert reasons["oxe/oxe_tiny-train.tfrecord-00000-of-00002/1"].endswith("record 1 (byte 47573): checksum mismatch")
    assert "step 2 of steps/observation/image: not a decodable JPEG/PNG" in reasons["oxe/data/raw/train/episode_1.npy"]
    assert "not a TFRecord file" in reasons["oxe/oxe_tiny-train.tfrecord-00002-of-00003"]
    assert reasons["web/00001/000010001"] == ("00001.tar sample 000010001: truncated: the shard ends inside member "
                                              "000010001.mp4")
    assert all("\n" not in r for r in reasons.values())
    # oxe 0, 2, 5 + droid 3 + web 2 + 1 + 1 (ok in the hostile shard) + epic 3 + ssv2 2
    assert report.added == 3 + 3 + 4 + 3 + 2


def test_rlds_episodes_hold_kept_frames_and_every_action_step(field) -> None:
    cfg, _, _ = field
    store = FeatureStore.open(cfg.store.uri)
    ep = store.episode("oxe/data/raw/val/episode_5.npy")  # 20 steps at 10 Hz: 2 s
    assert ep.features.shape[0] == 10 and ep.actions.actions.shape == (20, 7)
    np.testing.assert_allclose(ep.timestamps, np.arange(10) / 5, atol=1e-6)
    np.testing.assert_allclose(ep.actions.actions[:, 0], 5 + np.arange(20) / 100, rtol=1e-5)
    assert ep.instruction == "put the block in bowl 5"
    droid = store.episode("droid/gs://bucket/droid/lab/success/2023-04-20/recordings/MP4")  # 9 steps at 15 Hz
    assert droid.features.shape[0] == 3 and droid.actions.actions.shape == (9, 7)
    cat = {r["episode_id"]: r for r in store.catalog().to_pylist()}
    assert cat["P01_01_1"]["instruction"] == "take milk from fridge" and cat["P01_01_1"]["frames"] == 8  # 2.0-3.5 s
    assert cat["00000/000000001"]["frames"] == 5 and cat["78687"]["frames"] == 3


def test_a_refresh_opens_no_unchanged_shard_and_reads_only_a_new_one(field) -> None:
    cfg, root, first = field
    hashing.clear_cache()  # a fresh process: only what the store remembers
    again = ingest_corpus(cfg, progress=False, executor="local")
    stats = hashing.hash_stats()
    assert (again.added, again.version_after, stats["files"], stats["scans"]) == (0, None, 0, 0)
    assert again.skipped == first.added and again.held == len(first.quarantined)
    # and as `lawam ingest` runs it: neither the shard readers nor anything else loads torch, Ray or Prefect
    (root / "corpus.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out, heavy = lawam_ingest_in_a_fresh_process(root / "corpus.yaml", root)
    assert f"added 0, skipped {first.added}" in out and heavy == [], out

    shutil.copy(OXE / HELD_BACK, root / "oxe_tiny" / "1.0.0" / HELD_BACK)  # new shards, one per format
    make_webdataset(root / "web", (2,), start=3)
    time.sleep(0.4)
    hashing.clear_cache()
    grown = ingest_corpus(cfg, progress=False, executor="local")
    stats = hashing.hash_stats()
    assert (stats["files"], stats["scans"]) == (2, 2)  # the two new shards, and nothing else
    assert grown.added == 1 + 2 and grown.quarantined == [] and grown.version_after is not None
