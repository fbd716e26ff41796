"""Runs that can be trusted: a training run holds the store version it reads against `lawam gc`,
its card's version stays openable, and a run that failed can always be re-run."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import pytest

from model.train_lam import train_lam
from pipeline.store import FeatureStore
from pipeline.store.maintenance import gc_store
from schemas.training import LamConfig
from tests.stores import SynthSource, episode_data, write_store

BOT = SynthSource("bot", episodes=4, seconds=2.0)
TINY = LamConfig.model_validate({
    "model": {"width": 16, "heads": 2, "idm_layers": 1, "fdm_layers": 1, "code_dim": 4},
    "optim": {"steps": 6, "batch_size": 16, "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 0},
    "pairs": {"k_seconds": 0.4, "heldout_fraction": 0.25},
})

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


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
