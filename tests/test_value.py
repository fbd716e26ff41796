"""`lawam value`: what one source adds, measured with and without it on the same held-out episodes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from model.value import source_value
from pipeline.store.pairs import is_heldout
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


def test_value_in_a_fresh_process_then_asked_again_from_python(store_uri, tmp_path):
    """`lawam value` trains both runs in a fresh process and prints JSON; asking again from
    Python reuses both runs (nothing retrained) and, given the human clips' kept-aside
    actions, adds probes on human episodes."""
    config = tmp_path / "lam.yaml"
    config.write_text(yaml.safe_dump(TINY.model_dump(mode="json")))
    result = subprocess.run([sys.executable, "-m", "flows.cli", "value", "--store", store_uri, "--source", "cam",
                             "--steps", "12", "--config", str(config), "--out", str(tmp_path / "value"), "--json",
                             "--no-progress"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    shown = json.loads(result.stdout)
    assert (shown["source"], shown["kind"], shown["steps"]) == ("cam", "human", 12)
    without = json.loads((tmp_path / "value" / "without-cam" / "card.json").read_text())
    assert without["config"]["pairs"]["sources"] == ["bot"]
    card = tmp_path / "value" / "with" / "card.json"
    written = json.loads(card.read_text())
    assert written["config"]["pairs"]["sources"] == []  # "with" is the config as given: every source
    for kind in ("robot", "human"):  # the left-out source's held-out episodes are scored too
        a, b = shown["with_source"][kind], shown["without_source"][kind]
        assert a["heldout_episodes"] == b["heldout_episodes"] > 0 and a["heldout_pairs"] == b["heldout_pairs"]
        assert a["forward_mse"] != b["forward_mse"]  # two models, not one scored twice
    assert {(r["kind"], r["key"]) for r in shown["rows"]} >= {("robot", "forward_mse"), ("human", "forward_mse")}
    assert shown["unmeasured"] == {}

    mtime = (tmp_path / "value" / "with" / "model.safetensors").stat().st_mtime_ns
    del written["config"]["pairs"]["dedup"]  # a card written before a field existed: read with its default
    card.write_text(json.dumps(written))
    again = source_value(store_uri, "cam", out_dir=tmp_path / "value", cfg=TINY, steps=12, truth=human_truth())
    assert (tmp_path / "value" / "with" / "model.safetensors").stat().st_mtime_ns == mtime  # reused
    assert again.with_source["robot"] == shown["with_source"]["robot"]
    assert "probe_r2_z" in again.with_source["human"]  # the kept-aside actions reach the probes
    assert json.loads((tmp_path / "value" / "value.json").read_text())["rows"] == json.loads(
        json.dumps(again.rows()))


def test_an_unknown_source_is_one_line_and_exit_2(store_uri, tmp_path):
    result = subprocess.run([sys.executable, "-m", "flows.cli", "value", "--store", store_uri, "--source", "nope",
                             "--out", str(tmp_path / "v")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no such source" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "v").exists()


def test_the_only_source_trained_on_cannot_be_left_out(store_uri, tmp_path):
    only_bot = TINY.model_copy(update={"pairs": TINY.pairs.model_copy(update={"sources": ["bot"]})})
    with pytest.raises(ConfigError, match="only source"):
        source_value(store_uri, "bot", out_dir=tmp_path / "v", cfg=only_bot)
    assert not (tmp_path / "v").exists()


def test_a_kind_without_held_out_episodes_is_said_not_left_out_silently(tmp_path):
    """Seen on the demo store (4 human clips at the default 10% held out): the table showed
    robot rows only, with nothing to say why the human clips had no figures."""
    few = SynthSource("few", kind="human", episodes=3, seconds=3.0)
    assert not any(is_heldout(f"few/ep{i:03d}", None, TINY.pairs.heldout_fraction) for i in range(few.episodes))
    uri = str(tmp_path / "store")
    write_store(uri, [BOT, few])
    report = source_value(uri, "few", out_dir=tmp_path / "v", cfg=TINY, steps=4)
    assert {r["kind"] for r in report.rows()} == {"robot"}
    assert list(report.unmeasured) == ["human"] and "no held-out episodes" in report.unmeasured["human"]
    assert "human: no held-out episodes" in str(report.to_table().caption)
    assert json.loads((tmp_path / "v" / "value.json").read_text())["unmeasured"] == report.unmeasured
