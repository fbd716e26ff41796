"""Runs that can be trusted: a training run holds the store version it reads against `lawam gc`,
its card's version stays openable, and a run that failed can always be re-run."""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from model.checkpoint import read_card
from model.distill import SelectionError, distill
from model.labeler import IdmLabeler
from model.train_lam import train_lam
from pipeline.label import label_store
from pipeline.store import FeatureStore, StoreError
from pipeline.store.leases import Lease, VersionLease
from pipeline.store.maintenance import gc_store, tags
from schemas.cards import StoppedRun
from schemas.training import DistillConfig, LamConfig
from tests.label_runs import start_slow_label_run
from tests.stores import SynthSource, episode_data, write_store

BOT = SynthSource("bot", episodes=4, seconds=2.0)
TINY = LamConfig.model_validate({
    "model": {"width": 16, "heads": 2, "idm_layers": 1, "fdm_layers": 1, "code_dim": 4},
    "optim": {"steps": 6, "batch_size": 16, "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 0},
    "pairs": {"k_seconds": 0.4, "heldout_fraction": 0.25},
})

BC = DistillConfig.model_validate({
    "model": {"width": 16, "heads": 2, "layers": 1, "hidden": 32, "subgoal_dim": 4, "subgoal": False},
    "optim": {"steps": 3, "batch_size": 16, "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 0},
    "pairs": {"heldout_fraction": 0.25, "horizon": 4},
})
runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def lam_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_store(str(root / "store"), [BOT])
    train_lam(str(root / "store"), root / "lam", TINY, steps=2, keep_version=False, progress=False)
    return root / "lam"


class _GcAtStep:
    """A progress bar whose `at`-th step runs `lawam gc --older-than 0` on the store: gc in the
    middle of a training run, between two steps."""

    def __init__(self, uri: str, at: int):
        self.uri, self.at, self.steps, self.reports = uri, at, 0, []

    @contextmanager
    def __call__(self, name: str, total: int, unit: str):
        yield self

    def advance(self, n: int = 1) -> None:
        self.steps += n
        if n and self.steps == self.at:
            self.reports.append(gc_store(self.uri, timedelta(0)))

    def note(self, text: str) -> None:
        pass


def test_gc_in_the_middle_of_a_training_run_keeps_the_version_it_reads(tmp_path):
    """Incident guarded against: `lawam gc --older-than 0s` while `train-lam --version V` ran
    expired V; the run crashed, or finished with a card naming a version that no longer opens."""
    uri = str(tmp_path / "store")
    v1 = write_store(uri, [BOT])
    write_store(uri, [BOT], content="v2")  # every episode redone: v1's chunks are v1's alone
    gc = _GcAtStep(uri, at=3)
    card = train_lam(uri, tmp_path / "lam", TINY, version=v1, progress=gc)
    assert card.steps == TINY.optim.steps and card.store.version == v1
    [report] = gc.reports
    assert report.expired >= 1 and report.chunks_deleted == 0, "v1 was leased: none of its chunks went"
    assert any(reason.startswith("lease") and "train-lam" in reason for reason in report.kept[v1]), report.kept
    gc_store(uri, timedelta(0))  # after the run: its lease is gone, the finished run's tag keeps v1
    store = FeatureStore.open(uri, card.store.version)
    for i in range(BOT.episodes):
        np.testing.assert_array_equal(store.features(f"bot/ep{i:03d}"), episode_data(BOT, i)[0])
    assert card.store.tag and FeatureStore.open(uri, card.store.tag).version == v1


def test_the_same_weights_trained_on_a_newer_version_keep_that_version_too(tmp_path):
    """Seen with `lawam value` on the demo store: its run with every source trained the demo's
    LaWM again (same config, seed and features) on the version its labels committed. The
    weights' tag was on the older version, so the newer one went untagged, with a warning."""
    uri = str(tmp_path / "store")
    write_store(uri, [BOT])
    first = train_lam(uri, tmp_path / "a", TINY, progress=False)
    label_store(uri, IdmLabeler(str(tmp_path / "a")), progress=False)
    second = train_lam(uri, tmp_path / "b", TINY, progress=False)
    assert second.weights_sha256 == first.weights_sha256, "the case needs the same weights twice"
    assert second.store.version != first.store.version
    gc_store(uri, timedelta(0))
    for card in (first, second):
        assert card.store.tag and FeatureStore.open(uri, card.store.tag).version == card.store.version


def test_a_dead_runs_lease_holds_until_it_expires_then_gc_deletes_it(tmp_path):
    """A run killed mid-way cannot remove its lease: the lease holds its version for the TTL
    (12 h) after its last renewal, then the next gc deletes it and may expire the version."""
    uri = str(tmp_path / "store")
    v1 = write_store(uri, [BOT])
    write_store(uri, [BOT], content="v2")
    killed = VersionLease(uri, v1, "train-lam").__enter__()  # never exited: its process died
    killed._stop.set()  # ... and nobody renews it
    expires = Lease.parse(killed.tag, v1).expires - datetime.now(UTC)
    assert timedelta(hours=11, minutes=59) < expires <= timedelta(hours=12)
    stale = VersionLease(uri, v1, "label", ttl=timedelta(0)).__enter__()  # one whose 12 h have passed
    stale._stop.set()
    result = runner.invoke(app, ["gc", uri, "--older-than", "0"])
    assert result.exit_code == 0, result.output
    assert f"kept {v1}: lease of a train-lam run, until" in result.output
    assert "deleted the expired lease of a label run" in result.output
    assert killed.tag in tags(uri)[v1] and stale.tag not in tags(uri).get(v1, [])
    np.testing.assert_array_equal(FeatureStore.open(uri, v1).features("bot/ep000"), episode_data(BOT, 0)[0])
    killed.__exit__(None, None, None)  # its run ends after all: the lease goes, gc may take v1
    assert gc_store(uri, timedelta(0)).chunks_deleted > 0 and v1 not in tags(uri)
    with pytest.raises(StoreError, match="no version"):
        FeatureStore.open(uri, v1)


def test_a_label_run_holds_the_version_it_reads_and_lets_go_when_done(lam_dir, tmp_path):
    uri = str(tmp_path / "store")
    v1 = write_store(uri, [BOT])
    seen: list[dict] = []

    class Watching(IdmLabeler):
        def __call__(self):
            fn = super().__call__()

            def watched(a, b):
                seen.append(tags(uri))
                return fn(a, b)

            return watched

    label_store(uri, Watching(str(lam_dir)), use_ray=False, progress=False)
    assert seen and all(any(Lease.parse(t, v1).purpose == "label" for t in now.get(v1, [])
                            if Lease.parse(t, v1)) for now in seen)
    assert not any(Lease.parse(t, v) for v, names in tags(uri).items() for t in names), "the lease went"


def test_eval_holds_the_version_it_reads(tmp_path, monkeypatch):
    from pipeline.evaluation.evaluate import training_samples

    uri = str(tmp_path / "store")
    v1 = write_store(uri, [BOT])
    seen: list[dict] = []
    read = FeatureStore.episodes

    def episodes(self, *args, **kwargs):  # the evaluation's read of the store, watched
        seen.append(tags(uri))
        return read(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "episodes", episodes)
    assert training_samples(uri, v1) == ([], None)  # synthetic episodes: no sample record
    assert seen and all(any(Lease.parse(t, v1) and Lease.parse(t, v1).purpose == "eval" for t in now.get(v1, []))
                        for now in seen)
    assert not tags(uri), "the lease went"


def test_a_run_refused_before_its_first_step_leaves_nothing_and_the_same_command_runs_later(tmp_path):
    """Incident guarded against: a refused `distill` left OUT/resume/...; the next run said "holds
    a training run already; use --resume" and `--resume` said "nothing to resume"."""
    uri = str(tmp_path / "store")
    write_store(uri, [SynthSource("cam", kind="human", episodes=2)])
    with pytest.raises(SelectionError, match="no robot episodes"):
        distill(uri, tmp_path / "bc", None, BC, progress=False)
    assert not (tmp_path / "bc").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own")
    with pytest.raises(SelectionError):
        distill(uri, mine, None, BC, progress=False)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    write_store(uri, [BOT])  # the store now has what a policy needs
    assert distill(uri, mine, None, BC, progress=False).steps == 3


def test_resume_with_nothing_to_resume_starts_fresh_and_force_replaces_a_run(tmp_path, caplog):
    uri = str(tmp_path / "store")
    write_store(uri, [BOT])
    killed = tmp_path / "killed"  # what a run SIGKILLed before its first checkpoint leaves
    (killed / "resume").mkdir(parents=True)
    (killed / "resume" / "trainer.json").write_text(json.dumps({"kind": "lawm", "version": "X"}))
    (killed / "metrics.jsonl").write_text(json.dumps({"step": 99, "loss": 1.0}) + "\n")
    card = train_lam(uri, killed, TINY, resume=True, progress=False)
    assert card.steps == TINY.optim.steps
    assert "nothing to resume" in caplog.text and "starting a fresh run" in caplog.text
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert 99 not in steps, "nothing of the dead run is mixed into the new one"

    stopped = train_lam(uri, tmp_path / "lam", TINY, stop_at=2, progress=False)
    assert isinstance(stopped, StoppedRun)
    config = tmp_path / "lam.yaml"
    config.write_text(yaml.safe_dump(TINY.model_dump(mode="json")))
    args = ["train-lam", "--store", uri, "--out", str(tmp_path / "lam"), "--config", str(config), "--no-progress"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--resume continues it, --force replaces it" in refused.output
    replaced = runner.invoke(app, [*args, "--force", "--no-keep-version"])
    assert replaced.exit_code == 0, replaced.output
    steps = [json.loads(line)["step"] for line in (tmp_path / "lam" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == TINY.optim.steps, "a fresh run, not the stopped one's log"
    assert read_card(tmp_path / "lam").store.tag is None and "tagged" not in replaced.output


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            out.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(name))
    return out


def _descendants(pid: int) -> set[int]:
    children, found, todo = _children(), set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()[:60].replace(b"\0", b" ").decode().strip()
    except OSError:
        return "(gone)"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
def test_a_killed_label_run_leaves_no_ray_process_behind(lam_dir, tmp_path):
    """Incident guarded against: Ray processes of a SIGKILLed `lawam label` were alive 8 s later
    (Ray's agents outlive a killed driver by a minute: they report to a GCS that is gone)."""
    uri = str(tmp_path / "store")
    write_store(uri, [BOT])
    marker = tmp_path / "labelling"
    proc = start_slow_label_run(uri, lam_dir, marker, use_ray=True, timeout=240, poll=0.1)
    ray_processes = _descendants(proc.pid)  # GCS, raylet, agents, the label actor, the reaper
    assert len(ray_processes) >= 4, ray_processes
    before = {p: _cmd(p) for p in ray_processes if _alive(p)}
    os.kill(proc.pid, signal.SIGKILL)  # `kill -9` of the driver alone, as a user or an OOM killer does
    proc.wait()
    try:
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in ray_processes) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {p: _cmd(p) for p in ray_processes if _alive(p)}
        assert not left, f"alive 15 s after the driver was killed: {left} {before}"
    finally:
        for p in ray_processes:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
