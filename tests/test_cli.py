"""The `lawam` command line: help everywhere, one-line errors and non-zero exits on bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from model.checkpoint import read_card

runner = CliRunner()
COMMANDS = ["samples", "ingest", "catalog", "curate", "versions", "demo", "version", "train-lam", "label", "serve"]


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


@pytest.mark.parametrize("args", [["catalog", "{s}"], ["verify", "{s}"], ["versions", "{s}"], ["gc", "{s}"],
                                  ["tag", "{s}", "v", "t"], ["train-lam", "--store", "{s}", "--out", "{o}"],
                                  ["distill", "--store", "{s}", "--out", "{o}", "--no-subgoal"]])
def test_a_missing_store_is_one_line_exit_2_and_nothing_is_created(tmp_path, args):
    """Incident: `train-lam`, `catalog` and `verify` on a missing store created STORE/repo/;
    `verify` then said "damaged ... 1 problems" and exited 4."""
    store, out = tmp_path / "none", tmp_path / "run"
    line = one_line_error(runner.invoke(app, [a.format(s=store, o=out) for a in args]))
    assert "no feature store" in line and str(store) in line
    assert list(tmp_path.iterdir()) == []


def test_verify_of_an_unknown_version_is_one_line_exit_2(tmp_path):
    """Incident: `lawam verify S --version NOPE` said "damaged ... 1 problems", exit 4."""
    from tests.stores import SynthSource, write_store

    store = str(tmp_path / "store")
    write_store(store, [SynthSource("bot", episodes=1, seconds=1.0)])
    line = one_line_error(runner.invoke(app, ["verify", store, "--version", "NOPE"]))
    assert "has no version 'NOPE'" in line and f"lawam versions {store}" in line


def test_a_version_expired_by_gc_is_one_line_exit_2(tmp_path):
    from tests.stores import SynthSource, write_store

    store = str(tmp_path / "store")
    old = write_store(store, [SynthSource("bot", episodes=1, seconds=1.0)])
    write_store(store, [SynthSource("bot", episodes=2, seconds=1.0)])
    assert runner.invoke(app, ["gc", store, "--older-than", "0"]).exit_code == 0
    for cmd in ("verify", "catalog"):
        line = one_line_error(runner.invoke(app, [cmd, store, "--version", old]))
        assert f"has no version {old!r}" in line and "expired by `lawam gc`" in line


def test_samples_with_an_unknown_task(tmp_path):
    line = one_line_error(runner.invoke(app, ["samples", str(tmp_path), "--tasks", "fly-to-the-moon-v3"]))
    assert "fly-to-the-moon-v3" in line


def test_ingest_of_a_missing_source_folder_fails_before_any_flow(tmp_path):
    line = ingest_error(tmp_path, f"id: a\nkind: human\nformat: video_dir\nuri: {tmp_path / 'nope'}\n")
    assert "nope" in line and "no such folder" in line


def test_ingest_of_broken_yaml_names_file_and_line(tmp_path):
    assert "src.yaml: not valid YAML at line" in ingest_error(tmp_path, "id: a\nkind: [robot\n")


@pytest.mark.long
def test_demo_runs_the_chain_writes_the_report_and_again_redoes_nothing(prefect_server, ray_local, tmp_path):
    """The README's `make demo` at its smallest, in a fresh process as a user runs it: render →
    ingest → train-lam → label → distill → eval as the Prefect flow `lawam_chain`, then the
    catalog and report.html. The second run renders, ingests, labels and trains nothing: what
    it reuses is on disk, so it runs in this process (its Ray, the Prefect harness), as do
    `lawam latency` on the policy the first run made (batch 1)."""
    out = tmp_path / "demo"
    args = ["demo", str(out), "--episodes-per-task", "1", "--lam-steps", "20", "--policy-steps", "20",
            "--eval-tasks", "reach-v3", "--eval-episodes", "1", "--eval-max-steps", "6", "--latency-calls", "0",
            "--no-progress"]
    from prefect.settings import PREFECT_API_URL

    # The fresh process reports to this session's Prefect server and runs on this session's Ray,
    # as a user's demo joins the ones they run: an ephemeral server and a Ray of its own took
    # minutes to start beside the parallel workers (a fresh process starting both is what
    # test_ray_and_prefect_start_silently_without_verbose runs).
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1",
           "PREFECT_API_URL": PREFECT_API_URL.value(), "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    repo = Path(__file__).resolve().parents[1]
    try:
        first = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env,
                               timeout=480, cwd=repo)
    except subprocess.TimeoutExpired as e:  # what it had done by then, not only pytest's timeout
        pytest.fail(f"demo still running after {e.timeout} s: {(e.stdout or b'')[-3000:]!r} "
                    f"{(e.stderr or b'')[-3000:]!r}")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # 5 tasks x 1 robot episode + 2 x 2 human clips, every one labelled
    assert "+9 episodes" in first.stdout and "0 quarantined" in first.stdout, first.stdout[-3000:]
    assert "metaworld" in first.stdout and "human-standin" in first.stdout
    assert "9/9 episodes (100%)" in first.stdout

    html = (out / "report.html").read_text()
    for stage in ("ingest", "train_lam", "label", "distill", "evaluate", "Hours per source", "metaworld"):
        assert stage in html, stage
    assert html.count("data:image/png;base64,") == 2  # stage-1 curves, success rates (metrics: a table)
    assert html.index("Closed-loop success:") < html.index("Hours per source") and str(out) not in html

    [lam] = list((out / "runs").glob("lam-*"))
    [policy] = list((out / "runs").glob("policy-*"))
    card, pcard = (read_card(d) for d in (lam, policy))
    assert card.steps == 20 and pcard.steps == 20 and (lam / "curves.png").stat().st_size > 0
    assert pcard.label_set == card.label_set and pcard.lawm.weights_sha256 == card.weights_sha256
    from pipeline.store import FeatureStore

    store = FeatureStore.open(str(out / "store"))
    assert pcard.store.version == store.version  # the policy read the labelled version
    result = json.loads((policy / "eval" / "results.json").read_text())
    assert list(result["tasks"]) == ["reach-v3"] and len(result["episodes"]) == 1
    episode = result["episodes"][0]
    assert episode["steps"] <= 6 and episode["act_calls"] >= 2  # receding horizon: 4 of 8 actions per chunk
    assert (policy / "eval" / "rollout-reach-v3.mp4").stat().st_size > 0

    with _prefect_loggers_kept():  # `demo` quiets Prefect's loggers for the rest of its process
        again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output[-3000:]
    assert "(cached)" in again.stdout and "+0 episodes" in again.stdout and again.stdout.count("(reused)") == 3
    assert FeatureStore.open(str(out / "store")).version == store.version
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted([lam.name, policy.name])  # no new runs

    lat = runner.invoke(app, ["latency", "--policy", str(policy), "--calls", "50", "--threads", "1"])
    assert lat.exit_code == 0, lat.output[-3000:]
    assert "policy alone" in lat.stdout and "(cpu" in lat.stdout
    assert re.search(r"encoder \(\w+ \w+\) \+ policy", lat.stdout), lat.stdout  # runtime and precision named


@contextmanager
def _prefect_loggers_kept():
    import logging

    loggers = [logging.getLogger(name) for name in ("prefect", "prefect.flow_runs", "prefect.task_runs")]
    levels = [lg.level for lg in loggers]
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# --- a CLI that behaves (issue #9 item 7) ----------------------------------------------------


def _all_commands() -> list[str]:
    import typer.main

    return sorted(typer.main.get_command(app).commands)


def test_dash_h_is_help_on_the_app_and_every_command():
    commands = _all_commands()
    assert set(COMMANDS) <= set(commands)
    for args in [["-h"]] + [[cmd, "-h"] for cmd in commands]:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output and "--help" in result.output, args


def _premature_wraps(text: str, width: int) -> list[str]:
    """Lines of rendered help that end although the next line's first word would have fit:
    a sentence cut by a line break of the docstring, not by the terminal. Looks where
    docstrings go: the description paragraphs and the Commands panel's rows."""
    def indent(s: str) -> int:
        return len(s) - len(s.lstrip())

    bad, panel = [], None
    lines = text.splitlines()
    for a, b in zip(lines, lines[1:], strict=False):
        if a.startswith("╭"):
            panel = a.strip("╭─╮ ").split(" ")[0]
        elif a.startswith("╰"):
            panel = None
        boxed = a.startswith("│") and b.startswith("│")
        body_a, body_b = (a[1:-1], b[1:-1]) if boxed else (a, b)
        if not body_a.strip() or not body_b.strip() or a.startswith(("╭", "╰", " Usage")):
            continue
        if boxed and (panel != "Commands" or indent(body_b) <= 1):  # options' rows; a command's first line
            continue
        if not boxed and (panel is not None or indent(a) != indent(b)):
            continue
        room = (len(body_a) if boxed else width) - len(body_a.rstrip()) - 1
        if len(body_b.split()[0]) < room - 1:
            bad.append(f"{a!r} / {b!r}")
    return bad


def test_help_is_wrapped_by_the_terminal_not_by_the_docstring():
    """Incident: at 80 columns help text broke mid-sentence where the docstring did."""
    for args in [["--help"]] + [[cmd, "--help"] for cmd in _all_commands()]:
        result = runner.invoke(app, args, env={"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"})
        assert result.exit_code == 0, result.output
        assert not _premature_wraps(result.output, 80), (args, _premature_wraps(result.output, 80))


def test_version_option_prints_the_installed_version():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"lawam {version('lawam')}\n"


def test_an_unknown_store_version_is_one_line_naming_store_and_version(tmp_path):
    """Incident: `catalog STORE --version BOGUS` printed Icechunk's multi-line report."""
    from tests.stores import SynthSource, write_store

    store = str(tmp_path / "store")
    write_store(store, [SynthSource("bot", episodes=1, seconds=1.0)])
    for bogus in ("BOGUS", "0000000000000000000A"):  # not an id; an id of no snapshot
        line = one_line_error(runner.invoke(app, ["catalog", store, "--version", bogus]))
        assert store in line and repr(bogus) in line, line
        assert "|" not in line and ": x " not in line, line  # none of the report's frame


def test_an_object_store_fault_is_one_line_and_exit_1(tmp_path, monkeypatch):
    """An Icechunk error from the object store (here: S3 without a region, which fails before
    any request) is an infrastructure fault: one line, exit 1, no traceback."""
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    result = runner.invoke(app, ["catalog", "s3://lawam-no-such-bucket/store"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error: store: ") and "region" in lines[0], lines[0]
    assert isinstance(result.exception, SystemExit)  # typer.Exit, not a traceback


def test_a_multi_line_bad_input_message_is_cut_to_its_first_line():
    from pipeline.errors import exit_code, explain
    from schemas.errors import ConfigError

    e = ConfigError("\n  store 's' cannot be read: a report\n  | context: ...\n")
    assert explain(e) == "store 's' cannot be read: a report" and exit_code(e) == 2


def test_only_faults_that_are_not_bugs_are_cut_to_one_line():
    import ray.exceptions as rex

    from pipeline.errors import exit_code, explain

    line = explain(rex.WorkerCrashedError())
    assert line is not None and line.startswith("ray: WorkerCrashedError: The worker died") and "\n" not in line
    assert "retry" in line and exit_code(rex.WorkerCrashedError()) == 1
    assert explain(ValueError("a bug")) is None and exit_code(ValueError("a bug")) is None  # bugs keep their traceback
    assert explain(rex.RayTaskError("f", "Traceback ...", KeyError("k"))) is None  # a bug in a task


def test_eval_out_takes_a_folder_or_any_results_file_name(tmp_path):
    from flows.cli.evaluate import results_place

    policy = tmp_path / "policy"
    assert results_place(policy, None) == (policy / "eval", "results.json")
    assert results_place(policy, tmp_path / "runs" / "other.json") == (tmp_path / "runs", "other.json")
    assert results_place(policy, tmp_path / "evals") == (tmp_path / "evals", "results.json")
    (tmp_path / "eval.v2").mkdir()  # an existing folder, whatever its name
    assert results_place(policy, tmp_path / "eval.v2") == (tmp_path / "eval.v2", "results.json")


def _engines_start_stderr(verbose: bool, prefect: bool) -> str:
    """stderr of a fresh process that starts Ray (and runs a Prefect flow) the way `lawam`
    commands do: the app callback's `_env`, then `ensure_ray`."""
    code = (f"from flows.cli.app import _env; _env(verbose={verbose}); "
            "from pipeline.ray_runtime import ensure_ray; import ray; ensure_ray(); "
            + ("from prefect import flow; flow(lambda: 1, name='noop')(); " if prefect else "") + "ray.shutdown()")
    drop = ("RAY_AUTH_MODE", "RAY_ADDRESS", "LAWAM_LOG", "PREFECT_LOGGING_LEVEL")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def test_ray_and_prefect_start_silently_without_verbose():
    """Incident: Ray's token-auth warning and start-up lines (and Prefect's run logs on the
    flow path) were printed on every run."""
    assert _engines_start_stderr(verbose=False, prefect=True) == ""


def test_ray_start_up_lines_show_with_verbose():
    assert "Started a local Ray instance" in _engines_start_stderr(verbose=True, prefect=False)


def test_piped_output_gets_a_progress_line_every_few_seconds(tmp_path):
    """Incident: with output piped, nothing appeared until the end. A fresh `lawam train-lam`
    (no Ray) with stderr a pipe writes a plain status line every LAWAM_PROGRESS_EVERY seconds."""
    import re

    from tests.stores import SynthSource, write_store

    store = str(tmp_path / "store")
    write_store(store, [SynthSource("bot", episodes=6, seconds=3.0)])
    cfg = tmp_path / "lam.yaml"
    cfg.write_text("model: {width: 16, heads: 2, idm_layers: 1, fdm_layers: 1, code_dim: 4}\n"
                   "optim: {steps: 200, batch_size: 8, warmup_steps: 2, eval_every: 0, checkpoint_every: 0}\n"
                   "pairs: {heldout_fraction: 0.25}\n")
    env = {**os.environ, "NO_COLOR": "1", "LAWAM_PROGRESS_EVERY": "0.3", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "flows.cli", "train-lam", "--store", store, "--out",
                             str(tmp_path / "lam"), "--config", str(cfg)], capture_output=True, text=True,
                            env=env, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("train-lam: ")]
    steps = [int(re.match(r"train-lam: (\d+)/200 steps, [\d.]+/s, ", ln).group(1)) for ln in lines]
    assert len(steps) >= 3 and steps == sorted(steps) and steps[-1] == 200, result.stderr
    assert "eta" in lines[0] and "done in" in lines[-1] and "loss" in lines[-1]
    assert "train-lam:" not in result.stdout and "LaWM" in result.stdout  # stdout keeps only the result


def test_progress_lines_are_periodic_off_a_terminal_and_silent_when_disabled(capsys):
    import time

    from pipeline.progress import progress_bar

    with progress_bar("ingest", total=4, unit="episodes", every_s=0.05) as bar:
        for _ in range(4):
            time.sleep(0.12)
            bar.advance()
            bar.add_frames(10)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 5, lines  # ~9 periodic lines and the last one
    assert lines[0].startswith("ingest: 0/4 episodes") or lines[0].startswith("ingest: 1/4 episodes"), lines
    assert "eta" in lines[1] and lines[-1].startswith("ingest: 4/4 episodes") and "done in" in lines[-1]
    assert "40 frames" in lines[-1]
    with progress_bar("ingest", total=4, enabled=False, every_s=0.01) as bar:
        time.sleep(0.05)
        bar.advance()
    assert capsys.readouterr().err == ""
