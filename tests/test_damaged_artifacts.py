"""Damaged artifacts end in one line: random bytes and truncations of every artifact a command
reads (card.json, model.safetensors, a config YAML, results.json), fed to every command that
reads it, exit 1, 2 or 4 with exactly one line, never a traceback.

Incidents: a truncated policy `model.safetensors` made `lawam latency` / `lawam eval` end in
a ~50-line SafetensorError traceback (exit 1); a truncated LaWM made `lawam label` say
`ActorDiedError ... (retry: ...)`, never naming the file.

Commands run in-process (typer's CliRunner); every damaged artifact is refused before Ray
starts or anything is written, so an example costs milliseconds. A truncated config can still
be a valid one: then the command runs (one step) and must succeed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from flows.cli import app
from model.distill import distill
from model.train_lam import train_lam
from schemas.training import DistillConfig, LamConfig
from tests.stores import SynthSource, write_store

runner = CliRunner()
EXAMPLES = settings(max_examples=6, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
LAM = {"model": {"width": 16, "heads": 2, "idm_layers": 1, "fdm_layers": 1, "code_dim": 4},
       "optim": {"steps": 2, "batch_size": 8, "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 0},
       "pairs": {"k_seconds": 0.4, "heldout_fraction": 0.25}}
POLICY = {"model": {"width": 16, "heads": 2, "layers": 1, "hidden": 32, "subgoal_dim": 4, "subgoal": False},
          "optim": {"steps": 2, "batch_size": 8, "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 0},
          "pairs": {"heldout_fraction": 0.25, "horizon": 4}}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A store, a LaWM and a BC policy trained two steps on it, and the configs they used."""
    root = tmp_path_factory.mktemp("artifacts")
    store = str(root / "store")
    write_store(store, [SynthSource("bot", episodes=6, seconds=3.0), SynthSource("cam", kind="human", episodes=2)])
    train_lam(store, root / "lam", LamConfig.model_validate(LAM), progress=False)
    distill(store, root / "policy", None, DistillConfig.model_validate(POLICY), progress=False)
    (root / "lam.yaml").write_text(yaml.safe_dump(LAM, sort_keys=False))
    (root / "distill.yaml").write_text(yaml.safe_dump(POLICY, sort_keys=False))
    (root / "videos").mkdir()
    # uri first: a cut inside it ("uri: /") must not leave a valid source that walks the disk
    (root / "source.yaml").write_text(f"uri: {root / 'videos'}\nid: cam\nkind: human\nformat: video_dir\n")
    return {"root": root, "store": Path(store), "lam": root / "lam", "policy": root / "policy"}


def damaged(original: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, or the artifact cut short anywhere."""
    return st.one_of(st.binary(max_size=300), st.integers(0, len(original) - 1).map(lambda n: original[:n]))


def invoke_with(runs: dict[str, Path], artifact: str, name: str, data: bytes, args: list[str]):
    """Run `lawam args` on a copy of the runs whose `artifact`/`name` holds `data` instead.
    In args, {store}, {lam}, {policy}, {config} and {out} name the copies."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        places = {"store": str(runs["store"]), "out": str(tmp / "out")}
        for folder in ("lam", "policy"):
            shutil.copytree(runs[folder], tmp / folder, ignore=shutil.ignore_patterns("resume", "tb"))
            places[folder] = str(tmp / folder)
        target = tmp / artifact / name if artifact in ("lam", "policy") else tmp / name
        places["config"] = str(target)
        target.write_bytes(data)
        return runner.invoke(app, [a.format(**places) for a in args])


def assert_one_line(result) -> None:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code in (1, 2, 4), (result.exit_code, result.output[-3000:])
    assert isinstance(result.exception, SystemExit), result.output[-3000:]  # no traceback
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output[-3000:]


LAM_COMMANDS = {"label": ["label", "--store", "{store}", "--lam", "{lam}", "--no-progress"],
                "distill": ["distill", "--store", "{store}", "--labels", "{lam}", "--out", "{out}", "--no-progress"]}
POLICY_COMMANDS = {"latency": ["latency", "--policy", "{policy}", "--calls", "1", "--warmup", "0"],
                   "eval": ["eval", "--policy", "{policy}", "--tasks", "reach-v3", "--camera", "corner",
                            "--image-size", "64", "--episodes", "1", "--max-steps", "1", "--no-video",
                            "--latency-calls", "0", "--no-progress"]}


RUN_COMMANDS = {"lam": LAM_COMMANDS, "policy": POLICY_COMMANDS}


@pytest.mark.parametrize("name", ["card.json", "model.safetensors"])
@pytest.mark.parametrize(("run", "command"), [(run, c) for run, commands in RUN_COMMANDS.items() for c in commands])
def test_a_damaged_lawm_or_policy_is_one_line_naming_the_file(runs, run, name, command):
    original = (runs[run] / name).read_bytes()

    @EXAMPLES
    @given(data=damaged(original))
    def check(data: bytes) -> None:
        result = invoke_with(runs, run, name, data, RUN_COMMANDS[run][command])
        assert_one_line(result)
        assert result.exit_code == 2 and name in result.output, result.output

    check()


CONFIG_COMMANDS = {
    "lam.yaml": ["train-lam", "--store", "{store}", "--out", "{out}", "--config", "{config}", "--steps", "1",
                 "--no-progress"],
    "distill.yaml": ["distill", "--store", "{store}", "--out", "{out}", "--config", "{config}", "--no-subgoal",
                     "--steps", "1", "--no-progress"],
    "source.yaml": ["ingest", "{config}", "--store", "{out}", "--no-flow", "--no-progress"],
}


@pytest.mark.parametrize("name", list(CONFIG_COMMANDS))
def test_a_damaged_config_is_one_line_or_a_valid_config(runs, name):
    original = (runs["root"] / name).read_bytes()

    @EXAMPLES
    @given(data=damaged(original))
    def check(data: bytes) -> None:
        result = invoke_with(runs, "config", name, data, CONFIG_COMMANDS[name])
        if result.exit_code != 0:  # a cut that is still a valid config runs
            assert_one_line(result)  # naming the file, or the field and value that are wrong
            assert result.exit_code == 2, result.output

    check()


def test_damaged_results_are_one_line_or_evaluated_again(runs):
    """results.json is read by the chain (`lawam demo`): its reuse check evaluates again over a
    damaged one; any other reader says one line naming it."""
    from flows.stages import _finished_eval
    from pipeline.errors import explain
    from pipeline.evaluation.results import read_results
    from schemas.errors import ConfigError

    original = b'{"format": 1, "overall": {"episodes": 1}, "tasks": {"reach-v3": {}}, "settings": {}}'

    @EXAMPLES
    @given(data=damaged(original))
    def check(data: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "results.json"
            path.write_bytes(data)
            with pytest.raises(ConfigError) as bad:
                read_results(path)
            line = explain(bad.value)
            assert "results.json" in line and "\n" not in line
            assert _finished_eval(str(runs["policy"]), Path(tmp), None, 1, 0, None) is None

    check()
