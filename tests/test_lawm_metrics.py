"""Held-out LaWM metrics: the numbers that say whether z is a latent action mean what they claim.

The incident these guard against: a decoder that learns to ignore z still beats copying
f_t (it learns the average motion), so a forward MSE alone looks like progress. Only
z_explains and the shuffle increases tell the two apart, so they must read ~0 for such a
decoder, and the action probe must not credit z with what a noise regression can fit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model.lawm import LaWM
from model.metrics import (
    curves_png,
    lawm_metrics,
    plot_metrics,
    ridge_predict,
    ridge_r2,
    shuffle_within_groups,
    streaming_pca,
)
from schemas.training import LamModelConfig

T, D, H, A = 4, 8, 3, 2  # tokens, feature dim, chunk length, action dim


def make_pairs(n: int, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """PairArrays where f_tk = f_t + a linear function of the action chunk; the first half of the episodes are robot."""
    rng = np.random.default_rng(seed)
    actions = rng.normal(size=(n, H, A)).astype(np.float32)
    f_t = rng.normal(size=(n, T, D))
    drift = actions.reshape(n, -1) @ np.random.default_rng(0).normal(size=(H * A, D))  # (N, D), one world
    mask = np.ones((n, H), dtype=bool)
    mask[::7, -1] = False  # chunks running past an episode's end
    episode = np.array([f"ep{seed}-{i % episodes}" for i in range(n)])
    return {
        "f_t": f_t.astype(np.float16),
        "f_tk": (f_t + 0.5 * drift[:, None, :]).astype(np.float16),
        "episode": episode,
        "actions": actions,
        "action_mask": mask,
        "robot": np.array([i % episodes < episodes // 2 for i in range(n)]),
    }


def tiny_lawm(bottleneck: str = "vae") -> LaWM:
    """A random LaWM whose zero-initialised output layers are made non-zero, so z changes its predictions."""
    torch.manual_seed(0)
    cfg = LamModelConfig(width=16, heads=2, idm_layers=1, fdm_layers=1, code_dim=4, queries=2,
                         bottleneck=bottleneck, vq_codes=8)
    model = LaWM(cfg, tokens=T, feature_dim=D, state_dim=0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.1)
    return model


def test_decoder_ignoring_z_gets_no_credit_for_z() -> None:
    model = tiny_lawm()
    pairs = make_pairs(40, 4, seed=1)
    f_t, f_tk = (torch.from_numpy(pairs[k].astype(np.float32)).flatten(1) for k in ("f_t", "f_tk"))

    def oracle(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # f_tk exactly, whatever z says
        return model.standardize(f_tk[torch.cdist(x.float().flatten(1), f_t).argmin(1)].view(x.shape))

    model.decode = oracle  # type: ignore[method-assign]
    m = lawm_metrics(model, pairs, batch_size=16)
    assert m["forward_mse"] == pytest.approx(m["zero_z_mse"])
    assert m["forward_mse"] < 1e-3 * m["copy_mse"]  # the decoder beats copying, just not with z
    assert abs(m["z_explains"]) < 1e-6
    assert abs(m["shuffle_batch_increase"]) < 1e-6
    assert abs(m["shuffle_episode_increase"]) < 1e-6


def test_ridge_probe_recovers_a_linear_map_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)) * rng.uniform(0.1, 10, size=8)  # unequal scales: standardised inside
    y = x @ rng.normal(size=(8, 6)) + 3.0 + 0.05 * rng.normal(size=(600, 6))
    assert ridge_r2(x[:400], y[:400], x[400:], y[400:]) > 0.95
    noise = rng.normal(size=(600, 6))
    assert ridge_r2(x[:400], noise[:400], x[400:], noise[400:]) <= 0.1


def test_ridge_with_more_features_than_rows_is_the_same_ridge() -> None:
    """A flattened token grid has more features than a probe has rows: solved in the rows'
    gram, the predictions are the primal closed form's."""
    rng = np.random.default_rng(1)
    x, y, x_test = rng.normal(size=(40, 300)), rng.normal(size=(40, 3)), rng.normal(size=(10, 300))
    mean, std = x.mean(0), x.std(0)
    xs = (x - mean) / std
    w = np.linalg.solve(xs.T @ xs + 5.0 * np.eye(300), xs.T @ (y - y.mean(0)))
    np.testing.assert_allclose(ridge_predict(x, y, x_test, alpha=5.0), ((x_test - mean) / std) @ w + y.mean(0),
                               rtol=1e-6, atol=1e-8)


def test_episode_shuffle_moves_z_only_inside_an_episode() -> None:
    episodes = np.array(["a", "b", "a", "c", "b", "a", "b", "a", "d"])  # c and d hold one pair each
    perm = shuffle_within_groups(episodes, seed=3)
    assert sorted(perm) == list(range(len(episodes)))  # a permutation
    assert (episodes[perm] == episodes).all()  # z comes from the same episode
    single = np.isin(episodes, ["c", "d"])
    assert (perm[single] == np.flatnonzero(single)).all()  # single-pair episodes keep their own z
    assert (perm[~single] != np.flatnonzero(~single)).all()  # every other pair gets another pair's z
    assert (perm == shuffle_within_groups(episodes, seed=3)).all()  # fixed by the seed


def test_streaming_pca_matches_an_exact_svd() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 5)) @ rng.normal(size=(5, 40)) + rng.normal(size=40)  # rank 5, shifted
    mean, axes = streaming_pca(lambda: iter(np.array_split(x, 7)), 5, seed=1)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    assert np.allclose(mean, x.mean(0), atol=1e-5)
    assert np.allclose(np.abs(axes @ vt[:5].T), np.eye(5), atol=1e-4)  # same axes up to sign


def test_plots_are_readable_pngs(tmp_path: Path) -> None:
    import matplotlib.image

    metrics = lawm_metrics(tiny_lawm("vq"), make_pairs(24, 4, seed=1), make_pairs(40, 4, seed=2), batch_size=16)
    log = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "loss": 1.0 / (s + 1), "lr": 1e-3 * min(1, s / 5)} for s in range(0, 20, 2)]
    lines += [{"step": 10, "eval/forward_mse": 0.4}, {"no_step": 1}, {"step": 20, "eval/forward_mse": 0.3}]
    log.write_text("\n".join(json.dumps(r) for r in lines) + '\n{"step": 21, "loss"')  # writer mid-append
    for png in (plot_metrics(metrics, tmp_path / "m" / "metrics.png"), curves_png(log, tmp_path / "curves.png")):
        assert png.stat().st_size > 0
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_curves_are_curves_and_a_flat_one_is_drawn_flat(tmp_path: Path) -> None:
    """Incident: 14 of the demo's 24 curve panels were single dots (held-out metrics measured
    once, which the report tables), and a constant was drawn at 1e-8 scale ("1e-8+1.6931e-3")."""
    import io

    from model.metrics import curves_figure, read_curves

    log = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s, "copy": 1.6931e-3 + 1e-9 * (s % 3)} for s in range(1, 11)]
    rows.append({"step": 10, "eval/forward_mse": 0.24})
    log.write_text("\n".join(json.dumps(r) for r in rows))
    series = read_curves(log)
    assert set(series) == {"loss", "copy"}
    fig = curves_figure(series)
    fig.savefig(io.BytesIO())  # lays the axes out
    copy = next(ax for ax in fig.axes if ax.get_title() == "copy")
    assert copy.yaxis.get_offset_text().get_text() == ""
    lo, hi = copy.get_ylim()
    assert lo < 1.62e-3 and hi > 1.77e-3  # +-5% around the value, not +-1e-8


@pytest.mark.parametrize("bottleneck", ["vae", "vq"])
def test_metrics_of_a_real_lawm_are_complete_and_finite(bottleneck: str) -> None:
    model = tiny_lawm(bottleneck)
    model.train()
    heldout = make_pairs(30, 5, seed=1)
    m = lawm_metrics(model, heldout, make_pairs(60, 6, seed=2), batch_size=16, pca_dim=4)
    expected = {
        "forward_mse", "copy_mse", "zero_z_mse", "forward_over_copy", "z_explains",
        "shuffle_batch_increase", "shuffle_episode_increase", "probe_r2_z", "probe_r2_pca",
        "probe_pairs_train", "probe_pairs_heldout", "heldout_pairs", "heldout_episodes",
    } | ({"code_usage", "perplexity"} if bottleneck == "vq" else set())
    assert set(m) == expected
    assert all(isinstance(v, float) and np.isfinite(v) for k, v in m.items() if k != "z_explains")
    # a random LaWM does not beat copying f_t: then there is no gain for z to explain
    assert m["forward_mse"] >= m["copy_mse"] and np.isnan(m["z_explains"])
    assert m["heldout_pairs"] == 30 and m["heldout_episodes"] == 5
    assert m["probe_pairs_heldout"] == 10  # robot episodes 0, 1 hold 12 pairs; pairs 0 and 21 lack a full chunk
    assert abs(m["shuffle_batch_increase"]) > 1e-6  # the perturbed decoder does read z
    if bottleneck == "vq":
        assert 0 < m["code_usage"] <= 1 and 1 <= m["perplexity"] <= model.cfg.vq_codes
    assert model.training  # the caller's mode is restored
    json.dumps(m)


def test_probes_are_omitted_without_robot_pairs() -> None:
    heldout = make_pairs(20, 4, seed=1)
    heldout["robot"][:] = False
    m = lawm_metrics(tiny_lawm(), heldout, make_pairs(20, 4, seed=2), batch_size=16)
    assert not any(k.startswith("probe_") for k in m)


def test_missing_pair_arrays_name_the_key() -> None:
    pairs = make_pairs(8, 2, seed=1)
    del pairs["action_mask"]
    with pytest.raises(ValueError, match="action_mask"):
        lawm_metrics(nn.Linear(1, 1), pairs)
