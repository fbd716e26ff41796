"""The `lawam` command line: help everywhere, one-line errors and non-zero exits on bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()
COMMANDS = ["samples", "ingest", "catalog", "versions", "demo", "version", "train-lam", "label"]


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in result.output


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd):
    result = runner.invoke(app, [cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output.splitlines()) > 3


def test_version_names_the_engines():
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    for dist in ("lawam 0.1.0", "torch", "ray", "zarr", "icechunk", "prefect"):
        assert dist in result.output


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "lawam"
    assert exe.exists() or shutil.which("lawam"), "the `lawam` console script is not installed"
    result = subprocess.run([str(exe) if exe.exists() else "lawam", "version"], capture_output=True, text=True,
                            env={**os.environ, "NO_COLOR": "1"}, timeout=120)
    assert result.returncode == 0 and "lawam" in result.stdout


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:")
    return lines[0]


def test_ingest_of_a_missing_file(tmp_path):
    assert "nope.yaml" in one_line_error(runner.invoke(app, ["ingest", str(tmp_path / "nope.yaml")]))


def ingest_error(tmp_path, source_yaml: str) -> str:
    """Ingest a source file holding `source_yaml`; return the one-line error it must give."""
    src = tmp_path / "src.yaml"
    src.write_text(source_yaml)
    return one_line_error(runner.invoke(app, ["ingest", str(src), "--store", str(tmp_path / "s")]))


def test_ingest_of_a_bad_config_names_the_field(tmp_path):
    line = ingest_error(tmp_path, "id: a\nkind: robot\nformat: lerobot\nuri: x\ncamera: top\n")
    assert "camera: unknown field" in line


def test_ingest_of_a_source_needs_a_store(tmp_path):
    src = tmp_path / "src.yaml"
    src.write_text("id: a\nkind: human\nformat: video_dir\nuri: x\n")
    assert "--store" in one_line_error(runner.invoke(app, ["ingest", str(src)]))


def test_catalog_of_a_missing_store(tmp_path):
    assert "no feature store" in one_line_error(runner.invoke(app, ["catalog", str(tmp_path / "none")]))


def test_samples_with_an_unknown_task(tmp_path):
    line = one_line_error(runner.invoke(app, ["samples", str(tmp_path), "--tasks", "fly-to-the-moon-v3"]))
    assert "fly-to-the-moon-v3" in line


def test_ingest_of_a_missing_source_folder_fails_before_any_flow(tmp_path):
    line = ingest_error(tmp_path, f"id: a\nkind: human\nformat: video_dir\nuri: {tmp_path / 'nope'}\n")
    assert "nope" in line and "no such folder" in line


def test_ingest_of_broken_yaml_names_file_and_line(tmp_path):
    assert "src.yaml: not valid YAML at line" in ingest_error(tmp_path, "id: a\nkind: [robot\n")


def test_demo_end_to_end_and_again_does_nothing(tmp_path):
    """The README's `make demo`, in a fresh process as a user runs it: render, ingest through
    the Prefect flow, summarise; the second run renders and ingests nothing."""
    cmd = [sys.executable, "-m", "flows.cli", "demo", str(tmp_path / "demo"), "--episodes-per-task", "1"]
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    repo = Path(__file__).resolve().parents[1]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=repo)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "added 9, skipped 0, quarantined 0" in first.stdout  # 5 tasks x 1 robot episode + 2 x 2 human clips
    assert "metaworld" in first.stdout and "human-standin" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=repo)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(cached)" in again.stdout and "added 0, skipped 9" in again.stdout and "(unchanged)" in again.stdout

    # Stage 1 on the demo store, as the README goes on: train-lam, label, then the dataset serves the labels.
    store, lam = str(tmp_path / "demo" / "store"), tmp_path / "lam"
    train = subprocess.run([sys.executable, "-m", "flows.cli", "train-lam", "--store", store, "--out", str(lam),
                            "--steps", "20"], capture_output=True, text=True, env=env, timeout=600, cwd=repo)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
    assert "held-out forward error" in train.stdout and (lam / "card.json").is_file()
    label = subprocess.run([sys.executable, "-m", "flows.cli", "label", "--store", store, "--lam", str(lam)],
                           capture_output=True, text=True, env=env, timeout=600, cwd=repo)
    assert label.returncode == 0, label.stdout[-2000:] + label.stderr[-3000:]
    assert "+9 episodes" in label.stdout

    from model.data import collect
    from pipeline.store import FeatureStore
    from pipeline.store.pairs import PairQuery

    card = json.loads((lam / "card.json").read_text())
    batch = collect(FeatureStore.open(store), PairQuery(k_seconds=card["k_seconds"], split="all",
                                                        label_set=card["label_set"]))
    assert batch["label_mask"].all() and batch["label"].shape[1] == card["latent_dim"]
    assert batch["robot"].any() and batch["action_mask"][batch["robot"]].any()

    # Stage 2 on the same store: distil a policy from the labels, evaluate it closed loop, time it.
    policy = tmp_path / "policy"
    run = subprocess.run([sys.executable, "-m", "flows.cli", "distill", "--store", store, "--labels", str(lam),
                          "--out", str(policy), "--steps", "20"],
                         capture_output=True, text=True, env=env, timeout=600, cwd=repo)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "LaWAM policy" in run.stdout and "held-out action L1" in run.stdout
    pcard = json.loads((policy / "card.json").read_text())
    assert pcard["label_set"] == card["label_set"] and pcard["lawm"]["weights_sha256"] == card["weights_sha256"]
    assert pcard["store"]["version"] == FeatureStore.open(store).version

    results = tmp_path / "eval" / "results.json"
    ev = subprocess.run([sys.executable, "-m", "flows.cli", "eval", "--policy", str(policy), "--tasks", "reach-v3",
                         "--episodes", "1", "--seed", "3", "--max-steps", "6", "--workers", "1",
                         "--latency-calls", "0", "--out", str(results)],
                        capture_output=True, text=True, env=env, timeout=600, cwd=repo)
    assert ev.returncode == 0, ev.stdout[-2000:] + ev.stderr[-3000:]
    result = json.loads(results.read_text())
    assert list(result["tasks"]) == ["reach-v3"] and len(result["episodes"]) == 1
    episode = result["episodes"][0]
    assert episode["steps"] <= 6 and episode["act_calls"] >= 2  # receding horizon: 4 of 8 actions per chunk
    assert (results.parent / "success.png").stat().st_size > 0
    assert (results.parent / "rollout-reach-v3.mp4").stat().st_size > 0

    lat = subprocess.run([sys.executable, "-m", "flows.cli", "latency", "--policy", str(policy), "--calls", "200",
                          "--threads", "1"], capture_output=True, text=True, env=env, timeout=600, cwd=repo)
    assert lat.returncode == 0, lat.stdout[-2000:] + lat.stderr[-3000:]
    assert "policy alone" in lat.stdout and "encoder + policy" in lat.stdout and "(cpu" in lat.stdout
