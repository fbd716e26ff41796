"""Stage 2 trainer: a LaWAM policy distilled from a store's labels and actions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint import CheckpointError, file_sha256, read_card
from model.data import collect, to_torch
from model.distill import DistillRecipe, distill, keeps_actions
from model.labeler import IdmLabeler
from model.policy import load_policy
from model.train_lam import train_lam
from pipeline.label import label_store
from pipeline.store import FeatureStore
from schemas.cards import StoppedRun
from schemas.training import DistillConfig, LamConfig
from tests.stores import SynthSource, write_store

BOT = SynthSource("bot", episodes=8, seconds=3.0)
CAM = SynthSource("cam", kind="human", fps=10.0, episodes=4, seconds=2.0)
TINY_LAM = LamConfig.model_validate({
    "model": {"width": 32, "heads": 2, "idm_layers": 1, "fdm_layers": 1, "code_dim": 4},
    "optim": {"steps": 8, "batch_size": 32, "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 0},
    "pairs": {"k_seconds": 0.4},
})

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def tiny(steps: int = 12, **model) -> DistillConfig:
    return DistillConfig.model_validate({
        "model": {"width": 32, "heads": 2, "layers": 1, "hidden": 64, "subgoal_dim": 4, **model},
        "optim": {"steps": steps, "batch_size": 32, "warmup_steps": 2, "eval_every": 0, "checkpoint_every": 0},
        "pairs": {"heldout_fraction": 0.25, "horizon": 4},
    })


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[str, str]:
    """(store uri, LaWM folder): a store with robot and human episodes, labelled by a tiny LaWM."""
    root = tmp_path_factory.mktemp("distill")
    uri = str(root / "store")
    write_store(uri, [BOT, CAM])
    train_lam(uri, root / "lam", TINY_LAM, progress=False)
    label_store(uri, IdmLabeler(str(root / "lam")), use_ray=False, progress=False)
    return uri, str(root / "lam")


def test_card_names_the_whole_lineage_and_the_policy_acts(labelled, tmp_path):
    uri, lam = labelled
    card = distill(uri, tmp_path / "pol", lam, tiny(), progress=False)
    store = FeatureStore.open(uri)
    lam_card = read_card(lam)
    assert card.store.uri == uri and card.store.version == store.version
    assert card.encoder == store.encoder
    assert card.label_set == lam_card.label_set
    assert card.lawm.weights_sha256 == lam_card.weights_sha256
    assert card.lawm.store == lam_card.store and card.lawm.k_seconds == 0.4
    assert card.config["pairs"]["k_seconds"] == 0.4, "pairs use the LaWM's gap: labels exist for it only"
    assert card.horizon == 4 and card.action_dim == 2 and card.state_dim == 3
    assert card.control_hz == 20.0 and card.subgoal is True
    assert card.weights_sha256 == file_sha256(tmp_path / "pol" / "model.safetensors")
    assert np.isfinite(card.metrics["heldout_action"]) and np.isfinite(card.metrics["subgoal_mse"])
    assert any(k.startswith("lawm.") for k in load_file(tmp_path / "pol" / "model.safetensors")), \
        "the frozen decoder travels inside the policy"
    for name in ("metrics.jsonl", "curves.png"):
        assert (tmp_path / "pol" / name).stat().st_size > 0

    runner = load_policy(tmp_path / "pol")
    feats = store.features(store.keys[0])[0]
    chunk = runner.act(feats, "task 0", np.array([0.0, 0.0, 1.0], np.float32))
    assert chunk.shape == (4, 2) and chunk.dtype == np.float32 and np.isfinite(chunk).all()
    np.testing.assert_array_equal(chunk, runner.act(feats, "task 0", np.array([0.0, 0.0, 1.0], np.float32)))
    assert not np.array_equal(chunk, runner.act(feats, "task 1", np.array([0.0, 0.0, 1.0], np.float32))), \
        "the instruction reaches the chunk"


def test_a_human_only_batch_gives_the_action_head_zero_gradient(labelled):
    uri, lam = labelled
    store = FeatureStore.open(uri)
    recipe = DistillRecipe(tiny(), lam, read_card(lam).label_set)
    model = recipe.build(store, recipe.query("train"), fresh=True)
    human = collect(store, replace(recipe.query("all"), kinds=("human",)), max_pairs=16)
    assert human and not human["robot"].any() and human["label_mask"].any()
    loss, parts = recipe.loss(model, model, to_torch(human), torch.device("cpu"))
    loss.backward()
    assert float(parts["action"]) == 0.0
    grads = [p.grad for p in model.action_head.parameters()]
    assert all(g is None or not g.any() for g in grads), "no action gradient from human video"
    assert any(p.grad is not None and p.grad.any() for p in model.latent_head.parameters()), \
        "human video trains the latent term"


def test_overfits_a_tiny_set(labelled, tmp_path):
    _, lam = labelled
    uri = str(tmp_path / "tiny")
    write_store(uri, [SynthSource("bot", episodes=2, seconds=1.5)])  # 14 frames
    label_store(uri, IdmLabeler(lam), use_ray=False, progress=False)
    cfg = tiny(steps=300, width=64, hidden=128)
    cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 3e-3, "warmup_steps": 10}),
                                 "pairs": cfg.pairs.model_copy(update={"heldout_fraction": 0.0})})
    distill(uri, tmp_path / "pol", lam, cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "pol" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "action" in r]
    for term in ("action", "latent"):
        first, last = train[0][term], np.mean([r[term] for r in train[-3:]])
        assert last < 0.2 * first, (term, first, last)


def test_the_ablation_needs_no_lawm_and_action_fraction_drops_whole_episodes(labelled, tmp_path):
    uri, _ = labelled
    card = distill(uri, tmp_path / "bc", None, tiny(subgoal=False), progress=False)
    assert card.subgoal is False and card.lawm is None and card.label_set is None
    assert load_policy(tmp_path / "bc").act(np.zeros((4, 16), np.float32), "task 0", None).shape == (4, 2)
    with pytest.raises(CheckpointError, match="--labels"):
        distill(uri, tmp_path / "x", None, tiny())

    keys = [f"bot/ep{i:03d}" for i in range(400)]
    kept = keeps_actions(keys, 0.5)
    assert 0.4 < kept.mean() < 0.6 and np.array_equal(kept, keeps_actions(keys, 0.5))
    recipe = DistillRecipe(tiny(subgoal=False).model_copy(update={"action_fraction": 0.5}), None, None)
    store = FeatureStore.open(uri)
    model = recipe.build(store, recipe.query("train"), fresh=True)
    robot = collect(store, recipe.query("all"), max_pairs=2000)
    dropped = ~keeps_actions(robot["episode"], 0.5) & robot["robot"]
    assert dropped.any()
    only_dropped = {k: v[dropped] for k, v in robot.items()}
    _, parts = recipe.loss(model, model, to_torch(only_dropped), torch.device("cpu"))
    assert float(parts["action"]) == 0.0, "episodes without actions give no action term"


def test_resume_continues_exactly(labelled, tmp_path):
    uri, lam = labelled
    full = distill(uri, tmp_path / "full", lam, tiny(steps=10), progress=False)
    part = distill(uri, tmp_path / "part", lam, tiny(steps=10), progress=False, stop_at=4)
    assert isinstance(part, StoppedRun) and part.steps == 4
    resumed = distill(uri, tmp_path / "part", lam, resume=True, progress=False)
    assert resumed.steps == full.steps == 10
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "part" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_the_example_config_is_the_defaults():
    from schemas.training import load_distill_config

    assert load_distill_config(Path(__file__).resolve().parents[1] / "configs" / "distill.yaml") == DistillConfig()


def test_flow_matching_head_trains_and_acts_deterministically(labelled, tmp_path):
    uri, lam = labelled
    card = distill(uri, tmp_path / "flow", lam, tiny(steps=6, action_head="flow"), progress=False)
    assert card.config["model"]["action_head"] == "flow" and np.isfinite(card.metrics["heldout_action"])
    runner = load_policy(tmp_path / "flow")
    feats = FeatureStore.open(uri).features("bot/ep000")[3]
    a = runner.act(feats, "task 0", np.array([0.0, 0.0, 1.0], np.float32))
    assert a.shape == (4, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, runner.act(feats, "task 0", np.array([0.0, 0.0, 1.0], np.float32)))


def test_two_workers_on_ray_train_run_ddp(ray_local, labelled, tmp_path):
    uri, lam = labelled
    cfg = tiny(steps=30)
    cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 3e-3})})
    card = distill(uri, tmp_path / "ddp", lam, cfg, workers=2, progress=False)
    assert card.workers == 2 and card.steps == 30 and card.label_set
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    latent = [r["latent"] for r in rows if "latent" in r]
    assert np.mean(latent[-3:]) < np.mean(latent[:3]), latent
