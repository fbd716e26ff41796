"""`lawam value`: what one source adds, measured with and without it on the same held-out episodes."""

from __future__ import annotations

import json

import pytest

from model.value import source_value
from schemas.errors import ConfigError
from schemas.training import LamConfig
from tests.stores import SynthSource, episode_data, write_store

TINY = LamConfig.model_validate({
    "model": {"width": 32, "heads": 2, "idm_layers": 1, "fdm_layers": 1, "code_dim": 8},
    "optim": {"steps": 12, "batch_size": 32, "warmup_steps": 2, "eval_every": 0, "checkpoint_every": 0},
    "pairs": {"heldout_fraction": 0.3, "k_seconds": 0.4, "horizon": 3},
})
BOT, CAM = SynthSource("bot", episodes=12, seconds=3.0), SynthSource("cam", kind="human", episodes=10, seconds=3.0)

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("value") / "store")
    write_store(uri, [BOT, CAM])
    return uri


def human_truth() -> dict:
    """What the synthetic human episodes did, kept outside the store (as the benchmark keeps it)."""
    return {f"cam/ep{i:03d}": episode_data(CAM, i)[2] for i in range(CAM.episodes)}


def test_both_runs_are_scored_on_the_same_heldout_episodes_and_reused(store_uri, tmp_path):
    report = source_value(store_uri, "cam", out_dir=tmp_path / "value", cfg=TINY, steps=None, truth=human_truth())
    assert (report.source, report.kind, report.steps) == ("cam", "human", 12)
    without = json.loads((tmp_path / "value" / "without-cam" / "card.json").read_text())
    assert without["config"]["pairs"]["sources"] == ["bot"]
    for kind in ("robot", "human"):  # the left-out source's held-out episodes are scored too
        a, b = report.with_source[kind], report.without_source[kind]
        assert a["heldout_episodes"] == b["heldout_episodes"] > 0 and a["heldout_pairs"] == b["heldout_pairs"]
        assert a["forward_mse"] != b["forward_mse"]  # two models, not one scored twice
    assert "probe_r2_z" in report.with_source["human"]  # the kept-aside actions reach the probes
    kinds = {(r["kind"], r["key"]) for r in report.rows()}
    assert {("robot", "forward_mse"), ("human", "forward_mse"), ("human", "probe_r2_z")} <= kinds
    assert json.loads((tmp_path / "value" / "value.json").read_text())["rows"] == json.loads(
        json.dumps(report.rows()))

    mtime = (tmp_path / "value" / "with" / "model.safetensors").stat().st_mtime_ns
    again = source_value(store_uri, "cam", out_dir=tmp_path / "value", cfg=TINY, steps=None, truth=human_truth())
    assert (tmp_path / "value" / "with" / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not retrained
    assert again.rows() == report.rows()


@pytest.mark.parametrize(("source", "cfg", "match"), [
    ("nope", TINY, "no such source"),
    ("bot", TINY.model_copy(update={"pairs": TINY.pairs.model_copy(update={"sources": ["bot"]})}), "only source"),
])
def test_a_source_that_cannot_be_left_out_is_one_config_error(store_uri, tmp_path, source, cfg, match):
    with pytest.raises(ConfigError, match=match):
        source_value(store_uri, source, out_dir=tmp_path / "v", cfg=cfg)
    assert not (tmp_path / "v").exists()
