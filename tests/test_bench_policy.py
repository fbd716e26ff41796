"""The goal-position probe of `benchmarks.bench_policy`: its ridge is regularised per probe,
from the training episodes alone, so token grids of different sizes compare fairly."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_policy import ALPHAS, cv_alpha


def test_the_probe_regularises_a_wide_noisy_grid_more_than_a_narrow_clean_one():
    rng = np.random.default_rng(0)
    episodes = np.repeat(np.arange(20), 10)
    goal = rng.normal(size=(20, 3))[episodes]  # one goal per episode, as in reach and push
    narrow = np.concatenate([goal, rng.normal(size=(200, 5))], 1) + 0.01 * rng.normal(size=(200, 8))
    wide = np.concatenate([goal + rng.normal(size=goal.shape), rng.normal(size=(200, 2000))], 1)
    assert cv_alpha(narrow, goal, episodes) <= 10.0
    assert cv_alpha(wide, goal, episodes) >= 1e3
    assert cv_alpha(wide, goal, episodes) in ALPHAS
