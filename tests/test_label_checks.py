"""Labels checked like features, and label sets named by everything that shapes them.

Incidents guarded against (issue 20): a LaWM whose `idm_head.bias` bytes were set to 0xFF
labelled a store with NaN and exited 0, `lawam verify` said ok, `lawam distill` trained on the
NaN; a LaWM card whose `k_seconds` was edited wrote labels at another gap into the genuine set;
damaged labels could not be redone short of training a new LaWM.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from flows.cli import app
from model.checkpoint import CheckpointError, file_sha256, lawm_lineage, read_card
from model.data import collect
from model.distill import distill
from model.labeler import IdmLabeler
from model.train_lam import train_lam
from pipeline.label import label_store
from pipeline.store import FeatureStore, LabelSet, LabelWriter, list_label_sets
from pipeline.store.backend import open_repo
from pipeline.store.labels import NonFiniteLabelsError
from pipeline.store.pairs import PairQuery, k_frames_for
from pipeline.store.verify import damaged_labels, verify_store
from schemas.cards import LawmLineage
from schemas.errors import ConfigError
from schemas.identity import label_set_id
from schemas.training import DistillConfig, LamConfig
from tests.stores import SynthSource, write_store

BOT = SynthSource("bot", episodes=4, seconds=2.0)
CAM = SynthSource("cam", kind="human", fps=10.0, episodes=2, seconds=2.0)
TINY = LamConfig.model_validate({
    "model": {"width": 16, "heads": 2, "idm_layers": 1, "fdm_layers": 1, "code_dim": 4},
    "optim": {"steps": 3, "batch_size": 16, "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 0},
    "pairs": {"k_seconds": 0.4},
})
runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def lam_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lam")
    write_store(str(root / "store"), [BOT, CAM])
    train_lam(str(root / "store"), root / "lam", TINY, progress=False)
    return root / "lam"


@pytest.fixture
def store_uri(tmp_path) -> str:
    uri = str(tmp_path / "store")
    write_store(uri, [BOT, CAM])
    return uri


def _copy(lam_dir: Path, dest: Path) -> Path:
    shutil.copytree(lam_dir, dest, ignore=shutil.ignore_patterns("resume", "tb", "*.png"))
    return dest


def _fill_tensor_bytes(weights: Path, name: str, byte: int) -> None:
    """Set every byte of tensor `name` in a safetensors file to `byte` (the file stays valid)."""
    data = bytearray(weights.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    start, end = json.loads(data[8 : 8 + n])[name]["data_offsets"]
    data[8 + n + start : 8 + n + end] = bytes([byte]) * (end - start)
    weights.write_bytes(bytes(data))


def _edit_card(lam: Path, **fields) -> None:
    card = json.loads((lam / "card.json").read_text())
    card.update(fields)
    (lam / "card.json").write_text(json.dumps(card))


def _poison_labels(uri: str, set_id: str, key: str) -> str:
    """Write NaN into three label rows of `key` (as a label set written before labels were
    checked, or bytes that decode to NaN); returns the new version."""
    repo = open_repo(uri, create=False)
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="a")
    labels = LabelSet.open(FeatureStore.open(uri), set_id)
    row = labels.index.to_pylist()[labels.index["key"].to_pylist().index(key)]
    z = root[f"labels/{set_id}/shards/{row['shard']}/z"]
    z[row["row_start"] : row["row_start"] + 3] = np.nan
    return session.commit("NaN in the labels of one episode")


def test_a_lawm_whose_weights_are_not_its_cards_is_refused_before_anything_is_written(lam_dir, store_uri, tmp_path):
    """The issue's probe: `idm_head.bias` bytes set to 0xFF, the card untouched."""
    bad = _copy(lam_dir, tmp_path / "bad")
    _fill_tensor_bytes(bad / "model.safetensors", "idm_head.bias", 0xFF)
    with pytest.raises(CheckpointError, match="not the card's weights_sha256"):
        IdmLabeler(str(bad))
    before = FeatureStore.open(store_uri).version
    result = runner.invoke(app, ["label", "--store", store_uri, "--lam", str(bad), "--no-progress"])
    assert result.exit_code == 2 and "model.safetensors" in result.output and "weights changed" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert FeatureStore.open(store_uri).version == before
    with pytest.raises(CheckpointError, match="not the card's weights_sha256"):
        distill(store_uri, tmp_path / "pol", bad, progress=False)
    assert not (tmp_path / "pol").exists()


def test_a_lawm_giving_nan_on_a_probe_batch_is_refused_before_anything_is_written(lam_dir, store_uri, tmp_path):
    """The same NaN weights, with a card that agrees with them (a LaWM trained into NaN)."""
    bad = _copy(lam_dir, tmp_path / "bad")
    _fill_tensor_bytes(bad / "model.safetensors", "idm_head.bias", 0xFF)
    _edit_card(bad, weights_sha256=file_sha256(bad / "model.safetensors"))
    before = FeatureStore.open(store_uri).version
    with pytest.raises(NonFiniteLabelsError, match=f"{bad}.* gives NaN or inf on a probe batch"):
        label_store(store_uri, IdmLabeler(str(bad)), use_ray=False, progress=False)
    result = runner.invoke(app, ["label", "--store", store_uri, "--lam", str(bad), "--no-progress"])
    assert result.exit_code == 2 and "probe batch" in result.output and str(bad) in result.output
    assert len(result.output.strip().splitlines()) == 1
    store = FeatureStore.open(store_uri)
    assert store.version == before and list_label_sets(store) == []


class _NanAfterProbe(IdmLabeler):
    """A labeler whose model turns NaN after its first batch (the probe's): NaN mid-run."""

    def __call__(self):
        fn, calls = super().__call__(), []

        def nan_later(f_t, f_tk):
            z, codes = fn(f_t, f_tk)
            calls.append(1)
            if len(calls) > 1:
                z[-1, 0] = np.nan
            return z, codes

        return nan_later


def test_nan_labels_are_refused_at_write_time_and_nothing_is_committed(lam_dir, store_uri):
    before = FeatureStore.open(store_uri).version
    with pytest.raises(NonFiniteLabelsError, match=f"{lam_dir}.* gave NaN or inf for 1 of .* episode "):
        label_store(store_uri, _NanAfterProbe(str(lam_dir)), use_ray=False, pairs_per_task=1, progress=False)
    store = FeatureStore.open(store_uri)
    assert store.version == before and list_label_sets(store) == []
    assert label_store(store_uri, IdmLabeler(str(lam_dir)), use_ray=False, progress=False).episodes == 6


def test_verify_and_distill_refuse_nan_labels_and_label_damaged_relabels_them(ray_local, lam_dir, store_uri,
                                                                               tmp_path):
    labeler = IdmLabeler(str(lam_dir))
    label_store(store_uri, labeler, use_ray=False, progress=False)
    good = LabelSet.open(FeatureStore.open(store_uri), labeler.set_id).episode("bot/ep002").copy()
    _poison_labels(store_uri, labeler.set_id, "bot/ep002")

    result = runner.invoke(app, ["verify", store_uri, "--no-progress"])
    assert result.exit_code == 4, result.output
    assert "bot/ep002" in result.output and "3 pairs hold NaN or inf" in result.output
    assert damaged_labels(FeatureStore.open(store_uri), labeler.set_id) == ["bot/ep002"]

    cfg = DistillConfig.model_validate({"model": {"width": 16, "heads": 2, "layers": 1, "hidden": 32,
                                                  "subgoal_dim": 4},
                                        "optim": {"steps": 2, "batch_size": 16, "warmup_steps": 1, "eval_every": 0,
                                                  "checkpoint_every": 0}})
    with pytest.raises(ConfigError, match=r"not clean: .*bot/ep002.*--damaged"):
        distill(store_uri, tmp_path / "pol", lam_dir, cfg, progress=False)
    assert not (tmp_path / "pol").exists()

    result = runner.invoke(app, ["label", "--store", store_uri, "--lam", str(lam_dir), "--damaged", "--no-progress"])
    assert result.exit_code == 0 and "+1 episodes" in result.output and "1 relabelled on request" in result.output
    store = FeatureStore.open(store_uri)
    np.testing.assert_array_equal(LabelSet.open(store, labeler.set_id).episode("bot/ep002"), good)
    assert verify_store(store_uri, progress=False).ok, "the damaged rows are no longer referenced"
    assert distill(store_uri, tmp_path / "pol", lam_dir, cfg, progress=False).steps == 2


def test_label_redo_relabels_chosen_episodes_into_the_same_set(ray_local, lam_dir, store_uri):
    labeler = IdmLabeler(str(lam_dir))
    label_store(store_uri, labeler, use_ray=False, progress=False)
    before = LabelSet.open(FeatureStore.open(store_uri), labeler.set_id)
    result = runner.invoke(app, ["label", "--store", store_uri, "--lam", str(lam_dir), "--redo", "bot/ep001,cam/ep000",
                                 "--no-progress"])
    assert result.exit_code == 0 and "+2 episodes" in result.output and "4 already labelled" in result.output
    after = LabelSet.open(FeatureStore.open(store_uri), labeler.set_id)
    assert [s.id for s in list_label_sets(after.store)] == [labeler.set_id]
    for key in before.keys:
        np.testing.assert_array_equal(after.episode(key), before.episode(key))
    shards = dict(zip(after.index["key"].to_pylist(), after.index["shard"].to_pylist(), strict=True))
    assert shards["bot/ep001"] == shards["cam/ep000"] != shards["bot/ep000"], "rows replaced by the relabel"
    unknown = runner.invoke(app, ["label", "--store", store_uri, "--lam", str(lam_dir), "--redo", "bot/nope",
                                  "--no-progress"])
    assert unknown.exit_code == 2 and "'bot/nope'" in unknown.output


def test_editing_what_shapes_the_labels_in_a_card_gives_another_set(lam_dir, store_uri, tmp_path):
    """A card whose `k_seconds` was edited (weights untouched) writes into a set of its own; the
    genuine set keeps its labels, at its gap."""
    genuine = IdmLabeler(str(lam_dir))
    assert genuine.set_id == read_card(lam_dir).label_set, "the card's set is its contents' set"
    label_store(store_uri, genuine, use_ray=False, progress=False)
    k_before = LabelSet.open(FeatureStore.open(store_uri), genuine.set_id).index["k_frames"].to_pylist()

    edited = _copy(lam_dir, tmp_path / "edited")
    _edit_card(edited, k_seconds=0.8)
    other = IdmLabeler(str(edited))
    assert other.set_id != genuine.set_id
    report = label_store(store_uri, other, use_ray=False, progress=False)
    assert report.episodes == 6 and report.skipped == 0
    store = FeatureStore.open(store_uri)
    assert LabelSet.open(store, genuine.set_id).index["k_frames"].to_pylist() == k_before
    assert LabelSet.open(store, other.set_id).attrs["k_seconds"] == 0.8

    card = read_card(lam_dir)
    edits = {"feature_mean": [x + 1 for x in card.feature_mean], "encoder": replace(card.encoder, layer=3),
             "config": {**card.config, "model": {**card.config["model"], "bottleneck": "vq"}}}
    for field, value in edits.items():
        assert card.model_copy(update={field: value}).contents_label_set() != card.label_set, field
    assert card.model_copy(update={"metrics": {}}).contents_label_set() == card.label_set


def test_a_store_labelled_under_the_old_naming_stays_readable(lam_dir, store_uri):
    """Label sets were named `lam-` + the weights hash alone. A store labelled so keeps its set,
    readable by that name (catalog, dataset, export); the LaWM now labels into its new set."""
    lineage = lawm_lineage(lam_dir)
    legacy = label_set_id(lineage.weights_sha256)
    assert legacy != lineage.label_set
    labeler = IdmLabeler(str(lam_dir))
    dim = labeler.attrs["dim"]
    with LabelWriter.open(store_uri, legacy, labeler.attrs) as w:  # what an older lawam wrote
        store = FeatureStore.open(store_uri)
        for key in store.keys:
            row = store.row(key)
            k = int(k_frames_for(store.fps[row], 0.4))
            z = np.full((int(store.frames[row]) - k, dim), 0.5, np.float32)
            w.put(key, store.episodes()["content_hash"][row].as_py(), z, k)
        w.commit("old labels")
    store = FeatureStore.open(store_uri)
    assert LabelSet.open(store, legacy).episode("bot/ep000")[0, 0] == 0.5
    batch = collect(store, PairQuery(k_seconds=0.4, split="all", label_set=legacy))
    assert batch["label_mask"].all() and (batch["label"] == 0.5).all()
    catalog = runner.invoke(app, ["catalog", store_uri])
    assert f"label set {legacy}: 6/6 episodes" in catalog.output
    assert label_store(store_uri, labeler, use_ray=False, progress=False).episodes == 6
    old_lineage = {k: v for k, v in lineage.model_dump(mode="json").items() if k != "label_set"}
    assert LawmLineage.model_validate(old_lineage).label_set == legacy, "an old policy card names its set"
