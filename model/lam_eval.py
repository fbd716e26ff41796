"""Stage-1 quality across a whole corpus: robot and human clips apart, task by task.

Promise: `corpus_metrics(model, store, k_seconds)` scores one LaWM on the held-out episodes
of a store version with one fixed yardstick, whatever the model was trained on (a source
left out, another gap, another head), so two runs' numbers compare:

- `robot`: `lawm_metrics` on held-out robot pairs, probes fitted on training robot pairs
  (z -> action chunk beside PCA-32 of f_t), and `probe_r2_z[task]` per instruction.
- `human`: the same on held-out human clips, when the true actions of the human clips
  are handed in (`truth`, by episode key: kept aside by the caller, never in the store);
  the probes are fitted on the training human clips (z of a human clip -> what the hand
  did), and `transfer_r2_z` scores the *robot*-fitted probe on them.
- `tasks`: per robot instruction, forward / copy, z explains and the shuffle increases.

The yardstick: the action chunk is `horizon` steps at `action_rate` (the stage-1 default,
5 steps at 10 Hz) from t, held-out episodes by the same hash of the key the trainers use
(`heldout_fraction`), at most `max_pairs` pairs per side.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from torch import nn

from model.data import collect
from model.metrics import encode_pairs, lawm_metrics, probe_rows, r2_score, ridge_predict
from pipeline.store import FeatureStore
from pipeline.store.pairs import PairQuery, action_chunks
from schemas.records import ActionTrack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Yardstick:
    """What every run is scored on (held fixed across the runs being compared)."""

    horizon: int = 5
    action_rate: float = 10.0
    heldout_fraction: float = 0.1
    max_pairs: int = 4096
    seed: int = 0


def pairs_of(store: FeatureStore, kind: str, split: str, k_seconds: float, between: int, ys: Yardstick,
             truth: Mapping[str, ActionTrack] | None = None) -> dict[str, np.ndarray]:
    """Held-out or training pairs of one kind; human pairs get their chunks from `truth`
    (and count as having actions, `robot` True, only where it covers them)."""
    q = PairQuery(k_seconds=k_seconds, horizon=ys.horizon, action_rate=ys.action_rate, kinds=(kind,), split=split,
                  heldout_fraction=ys.heldout_fraction, seed=ys.seed, between=between)
    pairs = collect(store, q, ys.max_pairs)
    if not pairs or kind != "human" or not truth:
        return pairs
    n, dim = len(pairs["t"]), next(iter(truth.values())).actions.shape[1]
    pairs["robot"] = np.zeros(n, bool)
    pairs["actions"] = np.zeros((n, ys.horizon, dim), np.float32)  # a human-only selection has no action dims
    pairs["action_mask"] = np.zeros((n, ys.horizon), bool)
    for key in np.unique(pairs["episode"]).tolist():
        track = truth.get(key)
        if track is None:
            continue
        sel = np.flatnonzero(pairs["episode"] == key)
        t0 = store.timestamps(key)[pairs["t"][sel]]
        pairs["actions"][sel], pairs["action_mask"][sel] = action_chunks(track, t0, ys.horizon, ys.action_rate)
        pairs["robot"][sel] = True
    return pairs


def corpus_metrics(model: nn.Module, store: FeatureStore, k_seconds: float, *, ys: Yardstick = Yardstick(),
                   truth: Mapping[str, ActionTrack] | None = None) -> dict:
    """{"robot": {...}, "human": {...}, "tasks": {instruction: {...}}} of flat float dicts
    (a side without held-out pairs is left out)."""
    between = int(getattr(model.cfg, "idm_frames", 2)) - 2
    out: dict = {}
    robot_ho = pairs_of(store, "robot", "heldout", k_seconds, between, ys)
    robot_tr = pairs_of(store, "robot", "train", k_seconds, between, ys)
    if robot_ho:
        out["robot"] = lawm_metrics(model, robot_ho, robot_tr or None, group_by="instruction")
        out["tasks"] = {}
        for task in np.unique(robot_ho["instruction"]).tolist():
            sub = {k: v[robot_ho["instruction"] == task] for k, v in robot_ho.items()}
            m = lawm_metrics(model, sub)
            for name in ("probe_r2_z", "probe_r2_pca"):
                if f"{name}[{task}]" in out["robot"]:
                    m[name] = out["robot"].pop(f"{name}[{task}]")
            out["tasks"][task] = m
    human_ho = pairs_of(store, "human", "heldout", k_seconds, between, ys, truth)
    if human_ho:
        human_tr = pairs_of(store, "human", "train", k_seconds, between, ys, truth)
        out["human"] = lawm_metrics(model, human_ho, human_tr if truth else None)
        if truth and robot_tr:
            out["human"]["transfer_r2_z"] = _transfer_r2(model, robot_tr, human_ho)
    return out


def _transfer_r2(model: nn.Module, train: dict, heldout: dict) -> float:
    """R² on held-out human clips of the ridge probe z -> action chunk fitted on robot pairs."""
    rows_tr, rows_ho = probe_rows(train), probe_rows(heldout)
    if len(rows_tr) < 2 or len(rows_ho) < 2:
        return float("nan")
    z_tr, z_ho = encode_pairs(model, train, rows_tr), encode_pairs(model, heldout, rows_ho)
    y_tr = train["actions"][rows_tr].reshape(len(rows_tr), -1)
    y_ho = heldout["actions"][rows_ho].reshape(len(rows_ho), -1)
    return r2_score(y_ho, ridge_predict(z_tr, y_tr, z_ho))


def headline(m: dict) -> dict[str, float]:
    """The figures of the issue's aims, flat: robot probe z / PCA, forward / copy, z explains,
    shuffles; human probe z / PCA / transfer and forward / copy."""
    r, h = m.get("robot", {}), m.get("human", {})
    out = {f"robot_{k}": r[k] for k in ("probe_r2_z", "probe_r2_pca", "forward_over_copy", "z_explains",
                                        "shuffle_batch_increase", "shuffle_episode_increase") if k in r}
    out |= {f"human_{k}": h[k] for k in ("probe_r2_z", "probe_r2_pca", "transfer_r2_z", "forward_over_copy",
                                         "z_explains", "forward_mse", "copy_mse") if k in h}
    if "forward_mse" in r:
        out["robot_forward_mse"] = r["forward_mse"]
    return out
