"""Label sets: a trained IDM over every pair of the store, written back as versioned labels."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from model.checkpoint import read_card
from model.data import collect
from model.labeler import IdmLabeler
from model.train_lam import load_lawm, train_lam
from pipeline.label import label_store
from pipeline.store import FeatureStore, LabelSet, StoreMismatchError, list_label_sets
from pipeline.store.pairs import PairQuery, k_frames_for
from schemas.training import LamConfig
from tests.label_runs import start_slow_label_run
from tests.stores import SynthSource, fake_encoder, write_store

BOT = SynthSource("bot", episodes=5, seconds=3.0)
CAM = SynthSource("cam", kind="human", fps=10.0, episodes=3, seconds=2.0)
TINY = LamConfig.model_validate({
    "model": {"width": 32, "heads": 2, "idm_layers": 1, "fdm_layers": 1, "code_dim": 4},
    "optim": {"steps": 4, "batch_size": 32, "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 0},
})


@pytest.fixture(scope="module")
def lam_dir(tmp_path_factory) -> Path:
    """A (barely) trained LaWM on a store of the same encoder as every store below."""
    root = tmp_path_factory.mktemp("lam")
    write_store(str(root / "store"), [BOT, CAM])
    train_lam(str(root / "store"), root / "lam", TINY, progress=False)
    return root / "lam"


@pytest.fixture
def store_uri(tmp_path) -> str:
    uri = str(tmp_path / "store")
    write_store(uri, [BOT, CAM])
    return uri


def test_labels_cover_every_pair_and_are_the_idms_latents(ray_local, lam_dir, store_uri):
    labeler = IdmLabeler(str(lam_dir))
    before = FeatureStore.open(store_uri).version
    report = label_store(store_uri, labeler, use_ray=True, progress=False)
    assert report.episodes == 8 and report.version_before == before and report.version_after
    store = FeatureStore.open(store_uri)
    labels = LabelSet.open(store, labeler.set_id)
    model, card = load_lawm(lam_dir)
    assert labels.attrs["lam"]["weights_sha256"] == card.weights_sha256
    gaps = k_frames_for(store.fps, card.k_seconds)
    assert report.pairs == int((store.frames - gaps).sum())
    for key in store.keys:
        feats = store.features(key)
        k = int(k_frames_for(store.fps[store.row(key)], card.k_seconds))
        z = labels.episode(key)
        assert z.shape == (len(feats) - k, card.latent_dim) and labels.k_frames(key) == k
        expected = model.latent(torch.from_numpy(feats[:-k]), torch.from_numpy(feats[k:])).numpy()
        np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-5)


def test_labels_are_deterministic(lam_dir, store_uri, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(store_uri, copy)
    labeler = IdmLabeler(str(lam_dir))
    for uri in (store_uri, copy):
        label_store(uri, labeler, use_ray=False, progress=False)
    a, b = (LabelSet.open(FeatureStore.open(uri), labeler.set_id) for uri in (store_uri, copy))
    for key in a.keys:
        np.testing.assert_array_equal(a.episode(key), b.episode(key))


def test_rerun_labels_only_new_and_redone_episodes(lam_dir, store_uri):
    """Incident guarded against: a refresh that relabels the whole corpus for one new clip,
    or keeps serving labels computed from a video since replaced."""
    labeler = IdmLabeler(str(lam_dir))
    label_store(store_uri, labeler, use_ray=False, progress=False)
    nothing = label_store(store_uri, labeler, use_ray=False, progress=False)
    assert nothing.episodes == 0 and nothing.version_after is None and nothing.skipped == 8

    write_store(store_uri, [SynthSource("bot", episodes=6, seconds=3.0)], only={"bot/ep005"})  # a new episode
    write_store(store_uri, [BOT], content="v2", only={"bot/ep001"})  # a redone episode: new bytes, same key
    store = FeatureStore.open(store_uri)
    labels = LabelSet.open(store, labeler.set_id)
    assert labels.episode("bot/ep001") is None, "labels of the old features are no longer served"
    assert "bot/ep005" not in labels and labels.stale == 1
    old_other = labels.episode("bot/ep002")

    again = label_store(store_uri, labeler, use_ray=False, progress=False)
    assert again.episodes == 2
    labels = LabelSet.open(FeatureStore.open(store_uri), labeler.set_id)
    assert len(labels.keys) == 9 and labels.stale == 0
    np.testing.assert_array_equal(labels.episode("bot/ep002"), old_other)
    assert labels.episode("bot/ep001") is not None


def test_the_dataset_serves_labels_of_a_named_set(lam_dir, store_uri):
    labeler = IdmLabeler(str(lam_dir))
    label_store(store_uri, labeler, use_ray=False, progress=False)
    store = FeatureStore.open(store_uri)
    k = labeler.k_seconds
    batch = collect(store, PairQuery(k_seconds=k, split="all", label_set=labeler.set_id))
    assert batch["label_mask"].all()
    labels = LabelSet.open(store, labeler.set_id)
    for i in range(0, len(batch["t"]), 7):
        np.testing.assert_array_equal(batch["label"][i], labels.episode(batch["episode"][i])[batch["t"][i]])


def test_several_label_sets_coexist(lam_dir, store_uri, tmp_path):
    other = tmp_path / "other"
    train_lam(store_uri, other, TINY.model_copy(update={"optim": TINY.optim.model_copy(update={"seed": 1})}),
              progress=False)
    a, b = IdmLabeler(str(lam_dir)), IdmLabeler(str(other))
    assert a.set_id != b.set_id
    label_store(store_uri, a, use_ray=False, progress=False)
    label_store(store_uri, b, use_ray=False, progress=False)
    sets = {s.id: s for s in list_label_sets(FeatureStore.open(store_uri))}
    assert set(sets) == {a.set_id, b.set_id} and all(s.coverage == 1.0 for s in sets.values())


def test_a_lawm_of_another_encoder_is_refused(lam_dir, tmp_path):
    uri = str(tmp_path / "other-encoder")
    write_store(uri, [BOT], encoder=fake_encoder("another", seed=1))
    with pytest.raises(StoreMismatchError, match="labels would be meaningless"):
        label_store(uri, IdmLabeler(str(lam_dir)), use_ray=False, progress=False)
    assert list_label_sets(FeatureStore.open(uri)) == []
    result = CliRunner().invoke(app, ["label", "--store", uri, "--lam", str(lam_dir), "--no-progress"])
    assert result.exit_code == 2 and "meaningless" in result.output and "Traceback" not in result.output


def test_sigkill_mid_label_leaves_no_label_visible(lam_dir, store_uri, tmp_path):
    """Incident guarded against: a preempted labelling job. Nothing of it may be visible, and
    the re-run labels everything."""
    before = FeatureStore.open(store_uri).version
    marker = tmp_path / "started"
    proc = start_slow_label_run(store_uri, lam_dir, marker, use_ray=False, timeout=120, poll=0.05)
    time.sleep(1.0)  # a few episodes labelled and buffered, none committed
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = FeatureStore.open(store_uri)
    assert store.version == before and list_label_sets(store) == []
    report = label_store(store_uri, IdmLabeler(str(lam_dir)), use_ray=False, progress=False)
    assert report.episodes == 8


def test_cli_label_exports_and_catalog_shows_coverage(lam_dir, store_uri, tmp_path):
    runner = CliRunner()
    export = tmp_path / "labels.parquet"
    result = runner.invoke(app, ["label", "--store", store_uri, "--lam", str(lam_dir), "--export", str(export),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    card = read_card(lam_dir)
    table = pq.read_table(export)
    assert set(table.column_names) == {"episode", "t", "z"}
    store = FeatureStore.open(store_uri)
    labels = LabelSet.open(store, card.label_set)
    assert table.num_rows == sum(len(labels.episode(k)) for k in store.keys)
    catalog = runner.invoke(app, ["catalog", store_uri])
    assert f"label set {card.label_set}: 8/8 episodes (100%)" in catalog.output
