"""Held-out quality of a latent world model (LaWM): does z predict the future, and is it an action?

Promise: `lawm_metrics` turns a model and held-out pairs into one flat dict of floats
(JSON-able, names fixed) answering the questions of LAWAM.md "How quality is measured":

- Does the world model beat copying the present?  `forward_mse` vs `copy_mse`.
- Is it z that helps, or the decoder alone?  `zero_z_mse`, `z_explains`.
- Does z carry *this* pair's change, not a corpus- or episode-level average?  The two
  shuffle increases.
- Is the codebook used (vq)?  `code_usage`, `perplexity`.
- Does z encode the robot's action better than the image does?  `probe_r2_z` against the
  control `probe_r2_pca`.

Strategy, and why:

- **Standardised units.** Every MSE compares against `model.standardize(f_{t+k})`, the
  decoder's own target: raw errors would be dominated by a few large feature dimensions,
  and standardised ones compare across encoders and with the public fork's probes
  (forward 0.159 vs copy 0.557 on LIBERO).
- **z is the deterministic mean** (`encode(...).mu` in eval mode, what `LaWM.latent` returns
  and what stage 2 distils), so two evaluations of one checkpoint give the same numbers.
- **Shuffles are derangements**: each pair is decoded with *another* pair's z (a random
  cycle through the set, or through its episode), never by chance its own; an episode with
  a single pair keeps its z and adds nothing to the increase.
- **Probes split by episode** (train pairs vs held-out pairs come from different
  episodes, by the caller's split) and keep only robot pairs whose *whole* action chunk
  is valid: padding past an episode's end would be a made-up target, and filling it would
  reward predicting the fill value.
- **The PCA control is streamed** (randomised SVD with power iterations, Halko et al.
  2011): flattened features are T·D wide (196,608 for DINOv2 patch tokens), too wide to
  hold for thousands of pairs, so the train pairs are standardised batch by batch on
  each of a handful of passes.

Trade-off accepted: the encoder runs once and the decoder four times per held-out pair,
plus 7 standardisation passes over the train robot pairs for the PCA control (the control
does not depend on the weights but is refitted on every call: ~15 s for 2,000 pairs of
64 x 384 features on 2 CPU cores).

No store access: pairs arrive as plain numpy dicts (`PairArrays`, see `lawm_metrics`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from schemas.errors import ConfigError

logger = logging.getLogger(__name__)

PairArrays = dict[str, np.ndarray]
PAIR_KEYS = ("f_t", "f_tk", "episode", "actions", "action_mask", "robot")
_EPS = 1e-12


class MetricsInputError(ConfigError):
    """Pairs handed to `lawm_metrics` are not a valid PairArrays dict (an empty held-out split:
    raise `pairs.heldout_fraction` or ingest more episodes)."""


def lawm_metrics(
    model: nn.Module,
    heldout: PairArrays,
    train: PairArrays | None = None,
    *,
    batch_size: int = 512,
    seed: int = 0,
    pca_dim: int = 32,
    ridge_alpha: float = 1.0,
    group_by: str | None = None,
) -> dict[str, float]:
    """Held-out metrics of a LaWM; the model's train/eval mode is restored afterwards.

    `heldout` / `train` are PairArrays: `f_t`, `f_tk` (N, T, D) raw features (any float
    dtype), `episode` (N,) episode keys, `actions` (N, H, A) the action chunk from t,
    `action_mask` (N, H) bool, `robot` (N,) bool (a robot episode with actions).

    Returned keys (all floats; MSEs are means over every element N·T·D, in standardised units):

    - `forward_mse`: decode(f_t, z) against standardize(f_tk), z = encode(f_t, f_tk).mu in
      eval mode (vae mean / vq quantised vector: what `LaWM.latent` returns).
    - `copy_mse`: standardize(f_t) against standardize(f_tk) — the "nothing moves" baseline.
    - `zero_z_mse`: decode(f_t, 0) — what the decoder predicts without any latent.
    - `forward_over_copy`: forward_mse / copy_mse (below 1: the model beats copying).
    - `z_explains`: (zero_z_mse - forward_mse) / max(copy_mse - forward_mse, 1e-12), the
      fraction of the gain over copying that z (not the decoder alone) accounts for;
      ~0 when the decoder ignores z, can exceed 1 if decoding with z = 0 is worse than copying;
      NaN when the model does not beat copying (there is no gain to explain).
    - `shuffle_batch_increase`: forward MSE with each pair given another held-out pair's z
      (a random derangement over the whole set, fixed by `seed`) minus forward_mse.
    - `shuffle_episode_increase`: the same with z taken from another pair of the *same*
      episode (single-pair episodes keep their own) — what z says about this moment beyond
      what it says about the episode (task, scene, embodiment).
    - `code_usage`, `perplexity` (only when `encode` returns codes, i.e. vq): the fraction
      of the `cfg.vq_codes` codebook entries used on held-out pairs, and exp(entropy) of
      the code histogram pooled over all query positions (1 = collapse, vq_codes = uniform).
    - `probe_r2_z`, `probe_r2_pca`, `probe_pairs_train`, `probe_pairs_heldout` (only when
      `train` is given and both sets hold robot pairs with a fully valid chunk): R² on
      held-out robot pairs of a ridge regression (`ridge_alpha`, inputs standardised with
      train statistics, intercept fitted) fitted on train robot pairs, from z, and — the
      control — from the top-`pca_dim` principal components (fitted on those train pairs)
      of the flattened standardised f_t. See `ridge_r2` for the R² definition.
    - with `group_by` (a key of `heldout`, e.g. "instruction"), also `probe_r2_z[G]` and
      `probe_r2_pca[G]` for each group G: the same fitted probes scored on that group's
      held-out pairs alone (R² around the group's own mean: what the probe tells apart
      *within* a task, not which task it is).
    - `heldout_pairs`, `heldout_episodes`.
    """
    n = _check_pairs(heldout, "heldout")
    if train is not None:
        _check_pairs(train, "train")
    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            mu, codes = _encode(model, heldout, np.arange(n), batch_size, device)
            perms = {
                "shuffle_batch": shuffle_within_groups(np.zeros(n, dtype=np.int64), seed),
                "shuffle_episode": shuffle_within_groups(heldout["episode"], seed),
            }
            mse = _decode_errors(model, heldout, mu, perms, batch_size, device)
            out = {
                "forward_mse": mse["forward"],
                "copy_mse": mse["copy"],
                "zero_z_mse": mse["zero_z"],
                "forward_over_copy": mse["forward"] / max(mse["copy"], _EPS),
                # no gain over copying (a model that never saw these clips): nothing for z to explain
                "z_explains": ((mse["zero_z"] - mse["forward"]) / (mse["copy"] - mse["forward"])
                               if mse["copy"] - mse["forward"] > _EPS else float("nan")),
                "shuffle_batch_increase": mse["shuffle_batch"] - mse["forward"],
                "shuffle_episode_increase": mse["shuffle_episode"] - mse["forward"],
            }
            if codes is not None:
                out |= code_stats(codes, int(model.cfg.vq_codes))
            if train is not None:
                out |= _probes(model, heldout, mu, train, batch_size, device, seed, pca_dim, ridge_alpha,
                               None if group_by is None else np.asarray(heldout[group_by]))
    finally:
        model.train(was_training)
    out["heldout_pairs"] = float(n)
    out["heldout_episodes"] = float(len(np.unique(heldout["episode"])))
    return {k: float(v) for k, v in out.items()}


def shuffle_within_groups(groups: np.ndarray, seed: int) -> np.ndarray:
    """A permutation `perm` moving each index to another index of its group: pair i gets z[perm[i]].

    Each group's members are put in a random order and each one takes the next one's
    place (a random cycle), so no member of a group of two or more keeps its own index,
    and a group of one does.
    """
    groups = np.asarray(groups)
    n = len(groups)
    _, group_id = np.unique(groups, return_inverse=True)
    order = np.random.default_rng(seed).permutation(n)
    order = order[np.argsort(group_id[order], kind="stable")]  # grouped, random inside each group
    sorted_ids = group_id[order]
    pos = np.arange(n)
    starts = np.r_[True, sorted_ids[1:] != sorted_ids[:-1]]
    ends = np.r_[sorted_ids[1:] != sorted_ids[:-1], True]
    seg_start = np.maximum.accumulate(np.where(starts, pos, 0))
    nxt = np.where(ends, seg_start, pos + 1)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = order[nxt]
    return perm


def code_stats(codes: np.ndarray, n_codes: int) -> dict[str, float]:
    """Codebook usage and perplexity of integer codes (any shape), pooled over all positions."""
    counts = np.bincount(np.asarray(codes, dtype=np.int64).ravel(), minlength=n_codes)
    p = counts[counts > 0] / counts.sum()
    return {
        "code_usage": float((counts > 0).sum() / n_codes),
        "perplexity": float(np.exp(-(p * np.log(p)).sum())),
    }


def ridge_r2(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, alpha: float = 1.0
) -> float:
    """R² on the test rows of a closed-form ridge regression fitted on the train rows.

    Inputs are standardised with train mean/std (constant columns left unscaled) and the
    intercept is the train mean of y (not penalised). R² = 1 - SSE / SST with both sums
    over all rows *and* output columns, SST around the test mean: variance-weighted, so
    high-variance outputs count more. 0 = no better than the test mean, negative = worse;
    NaN when the test targets are constant.
    """
    return r2_score(y_test, ridge_predict(x_train, y_train, x_test, alpha))


def ridge_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Predictions for the test rows of the ridge regression `ridge_r2` describes."""
    x_train, y_train = np.asarray(x_train, np.float64), np.asarray(y_train, np.float64)
    x_test = np.asarray(x_test, np.float64)
    mean, std = x_train.mean(0), x_train.std(0)
    std[std < 1e-8] = 1.0
    xs = (x_train - mean) / std
    y_mean = y_train.mean(0)
    if len(xs) < xs.shape[1]:  # fewer rows than features (a flattened token grid): the same ridge, dual form
        gram = xs @ xs.T + alpha * np.eye(len(xs))
        w = xs.T @ np.linalg.lstsq(gram, y_train - y_mean, rcond=None)[0]
    else:
        gram = xs.T @ xs + alpha * np.eye(xs.shape[1])
        w = np.linalg.lstsq(gram, xs.T @ (y_train - y_mean), rcond=None)[0]  # lstsq: alpha=0 may be singular
    return ((x_test - mean) / std) @ w + y_mean


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """1 - SSE / SST over all rows and columns, SST around the mean of `y`; NaN when `y` is constant."""
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    sst = float(((y - y.mean(0)) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / sst if sst > 0 else float("nan")


def streaming_pca(
    chunks: Callable[[], Iterator[np.ndarray]], dim: int, *, seed: int = 0, oversample: int = 10, power_iters: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and top-`dim` principal axes (k, F), float32, of rows that `chunks()` yields in (b, F) blocks.

    Randomised SVD (Halko, Martinsson & Tropp 2011) with `power_iters` power iterations;
    `chunks` is called 2 * (power_iters + 1) + 1 times and each call must yield the same rows
    in the same order. Exact when dim + oversample reaches the rank. k = min(dim, rows, F).
    """
    total, n = None, 0
    for c in chunks():
        s = np.asarray(c).sum(0, dtype=np.float64)
        total, n = (s if total is None else total + s), n + len(c)
    if total is None or n == 0:
        raise MetricsInputError("streaming_pca: chunks() yielded no rows")
    mean = (total / n).astype(np.float32)  # (F,); the wide products run in float32: a (512, 196608) block is 400 MB
    width = min(dim + oversample, n, mean.size)
    right = np.random.default_rng(seed).standard_normal((mean.size, width), dtype=np.float32)  # (F, l)
    for it in range(power_iters + 1):
        left = np.linalg.qr(np.concatenate([(np.asarray(c, np.float32) - mean) @ right for c in chunks()]))[0]
        bt, row = np.zeros(right.shape, np.float64), 0  # B^T = Xc^T Q: (F, l)
        for c in chunks():
            bt += (np.asarray(c, np.float32) - mean).T @ left[row : row + len(c)].astype(np.float32)
            row += len(c)
        if it < power_iters:
            right = np.linalg.qr(bt)[0].astype(np.float32)
    _, _, vt = np.linalg.svd(bt.T, full_matrices=False)
    return mean, vt[: min(dim, n, mean.size)].astype(np.float32)


# --- model passes ---------------------------------------------------------------------------


def _check_pairs(pairs: PairArrays, name: str) -> int:
    missing = [k for k in PAIR_KEYS if k not in pairs]
    if missing:
        raise MetricsInputError(f"{name} pairs lack {missing!r}; PairArrays holds {PAIR_KEYS!r}")
    n = len(pairs["f_t"])
    lengths = {k: len(pairs[k]) for k in PAIR_KEYS if len(pairs[k]) != n}
    if lengths:
        raise MetricsInputError(f"{name} pairs disagree on length: f_t has {n}, but {lengths!r}")
    if pairs["f_t"].shape != pairs["f_tk"].shape or pairs["f_t"].ndim != 3:
        raise MetricsInputError(
            f"{name} f_t {pairs['f_t'].shape!r} and f_tk {pairs['f_tk'].shape!r} must both be (N, T, D)"
        )
    if name == "heldout" and n == 0:
        raise MetricsInputError("heldout pairs are empty: nothing to measure (is the held-out split empty?)")
    return n


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _tensor(a: np.ndarray, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a[rows])).to(device=device, dtype=torch.float32)


def _row_batches(rows: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), batch_size):
        yield rows[start : start + batch_size]


def encode_pairs(model: nn.Module, pairs: PairArrays, rows: np.ndarray | None = None,
                 batch_size: int = 512) -> np.ndarray:
    """Deterministic z (len(rows), Z) float32 of the pairs at `rows` (default all), in eval mode."""
    rows = np.arange(len(pairs["f_t"])) if rows is None else rows
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return _encode(model, pairs, rows, batch_size, _device(model))[0]
    finally:
        model.train(was_training)


def _encode(
    model: nn.Module, pairs: PairArrays, rows: np.ndarray, batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray | None]:
    """z = mu (len(rows), Z) float32 and codes (len(rows), Q) or None."""
    mus, codes = [], []
    for b in _row_batches(rows, batch_size):
        f_mid = _tensor(pairs["f_mid"], b, device) if "f_mid" in pairs else None
        out = model.encode(_tensor(pairs["f_t"], b, device), _tensor(pairs["f_tk"], b, device), f_mid)
        mus.append(out.mu.float().cpu().numpy())
        if out.codes is not None:
            codes.append(out.codes.cpu().numpy())
    return np.concatenate(mus), (np.concatenate(codes) if codes else None)


def _decode_errors(
    model: nn.Module,
    pairs: PairArrays,
    mu: np.ndarray,
    perms: dict[str, np.ndarray],
    batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    """Mean squared error per element of each prediction against standardize(f_tk)."""
    sse = dict.fromkeys(["forward", "copy", "zero_z", *perms], 0.0)
    count = 0
    conditioned = getattr(model, "fdm_lang", None) is not None  # an FDM that reads the instruction
    for b in _row_batches(np.arange(len(mu)), batch_size):
        f_t = _tensor(pairs["f_t"], b, device)
        target = model.standardize(_tensor(pairs["f_tk"], b, device)).float()  # (B, T, D)
        z = torch.from_numpy(mu[b]).to(device)  # (B, Z)
        instr = [str(x) for x in pairs["instruction"][b]] if conditioned else None

        def decode(z: torch.Tensor, f_t=f_t, instr=instr) -> torch.Tensor:
            return model.decode(f_t, z, instr) if instr is not None else model.decode(f_t, z)

        sse["forward"] += _sse(decode(z), target)
        sse["copy"] += _sse(model.standardize(f_t), target)
        sse["zero_z"] += _sse(decode(torch.zeros_like(z)), target)
        for name, perm in perms.items():
            sse[name] += _sse(decode(torch.from_numpy(mu[perm[b]]).to(device)), target)
        count += target.numel()
    return {k: v / count for k, v in sse.items()}


def _sse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(((pred.float() - target) ** 2).sum(dtype=torch.float64))


def probe_rows(pairs: PairArrays) -> np.ndarray:
    """Robot pairs whose whole action chunk is valid (padding past an episode's end is no target)."""
    valid = np.asarray(pairs["action_mask"], bool).reshape(len(pairs["robot"]), -1).all(axis=1)
    return np.flatnonzero(np.asarray(pairs["robot"], bool) & valid)


def _probes(
    model: nn.Module,
    heldout: PairArrays,
    heldout_mu: np.ndarray,
    train: PairArrays,
    batch_size: int,
    device: torch.device,
    seed: int,
    pca_dim: int,
    ridge_alpha: float,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Ridge probes z -> action chunk and PCA(f_t) -> action chunk; {} when a side has no robot pairs."""
    rows_tr, rows_ho = probe_rows(train), probe_rows(heldout)
    if len(rows_tr) < 2 or len(rows_ho) < 2:
        logger.info("no probes: %d train / %d held-out robot pairs with a full chunk", len(rows_tr), len(rows_ho))
        return {}
    y_tr = train["actions"][rows_tr].reshape(len(rows_tr), -1)  # (N, H*A)
    y_ho = heldout["actions"][rows_ho].reshape(len(rows_ho), -1)
    z_tr, _ = _encode(model, train, rows_tr, batch_size, device)

    def flat_f_t(pairs: PairArrays, rows: np.ndarray) -> Callable[[], Iterator[np.ndarray]]:
        def chunks() -> Iterator[np.ndarray]:
            for b in _row_batches(rows, batch_size):
                yield model.standardize(_tensor(pairs["f_t"], b, device)).float().reshape(len(b), -1).cpu().numpy()

        return chunks

    mean, axes = streaming_pca(flat_f_t(train, rows_tr), pca_dim, seed=seed)
    pc_tr = np.concatenate([(c - mean) @ axes.T for c in flat_f_t(train, rows_tr)()])
    pc_ho = np.concatenate([(c - mean) @ axes.T for c in flat_f_t(heldout, rows_ho)()])
    pred_z = ridge_predict(z_tr, y_tr, heldout_mu[rows_ho], ridge_alpha)
    pred_pca = ridge_predict(pc_tr, y_tr, pc_ho, ridge_alpha)
    r2_z, r2_pca = r2_score(y_ho, pred_z), r2_score(y_ho, pred_pca)
    if not (math.isfinite(r2_z) and math.isfinite(r2_pca)):
        logger.warning("no probes: held-out actions are constant, R² is undefined")
        return {}
    out = {
        "probe_r2_z": r2_z,
        "probe_r2_pca": r2_pca,
        "probe_pairs_train": float(len(rows_tr)),
        "probe_pairs_heldout": float(len(rows_ho)),
    }
    if groups is not None:
        g_ho = groups[rows_ho]
        for g in np.unique(g_ho).tolist():
            m = g_ho == g
            out[f"probe_r2_z[{g}]"] = r2_score(y_ho[m], pred_z[m])
            out[f"probe_r2_pca[{g}]"] = r2_score(y_ho[m], pred_pca[m])
    return out


# --- plots ----------------------------------------------------------------------------------


def _figure(ncols: int, nrows: int, panel: tuple[float, float]) -> Any:
    """A pyplot-free Agg figure: no display, no global backend state."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install matplotlib") from e
    return Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")


def plot_metrics(metrics: dict[str, float], path: str | Path, title: str = "LaWM held-out metrics") -> Path:
    """PNG of `lawm_metrics` output: forward / z=0 / copy / shuffled-z MSE bars, and probe R² bars if present."""
    path = Path(path)
    has_probe = "probe_r2_z" in metrics and "probe_r2_pca" in metrics
    fig = _figure(2 if has_probe else 1, 1, (5.0, 3.6))
    axes = fig.subplots(1, 2 if has_probe else 1, squeeze=False)[0]
    fwd = metrics["forward_mse"]
    bars = {"forward": fwd, "z = 0": metrics.get("zero_z_mse"), "copy f_t": metrics.get("copy_mse")}
    shuffled = {"shuffle_batch_increase": "z shuffled\n(set)", "shuffle_episode_increase": "z shuffled\n(episode)"}
    for key, label in shuffled.items():
        if key in metrics:
            bars[label] = fwd + metrics[key]
    bars = {k: v for k, v in bars.items() if v is not None}
    colors = ["tab:blue", "tab:gray", "tab:red", "tab:orange", "tab:olive"][: len(bars)]
    drawn = axes[0].bar(list(bars), list(bars.values()), color=colors)
    axes[0].bar_label(drawn, fmt="%.3g", fontsize=8)
    axes[0].set_ylabel("MSE (standardised features)")
    axes[0].set_title("forward prediction of f_{t+k}", fontsize=10)
    axes[0].tick_params(axis="x", labelsize=8)
    if has_probe:
        r2 = {"z": metrics["probe_r2_z"], "PCA of f_t": metrics["probe_r2_pca"]}
        drawn = axes[1].bar(list(r2), list(r2.values()), color=["tab:blue", "tab:gray"])
        axes[1].bar_label(drawn, fmt="%.3g", fontsize=8)
        axes[1].axhline(0.0, color="black", linewidth=0.8)
        axes[1].set_ylabel("held-out R²")
        pairs = f" ({metrics['probe_pairs_heldout']:.0f} pairs)" if "probe_pairs_heldout" in metrics else ""
        axes[1].set_title(f"linear probe -> action chunk{pairs}", fontsize=10)
    notes = [f"{metrics[k]:.0f} {k.split('_')[1]}" for k in ("heldout_pairs", "heldout_episodes") if k in metrics]
    if "code_usage" in metrics:
        notes.append(f"code usage {metrics['code_usage']:.2f}, perplexity {metrics['perplexity']:.2f}")
    fig.suptitle(title + ("\n" + "; ".join(notes) if notes else ""), fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def read_curves(metrics_jsonl: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """key -> (steps, values) of a metrics.jsonl, for every numeric key logged at two steps
    or more: a key logged once (a held-out metric measured only at the end) is a number, not
    a curve, and is reported as one (the card, the report's table).

    Each line is a JSON object with a numeric `step`; every other numeric (non-bool) value is
    a point of its key's curve, so lines logging different keys (train vs eval) mix freely.
    Lines without `step`, and a line cut short by a writer still appending, are skipped."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, line in enumerate(Path(metrics_jsonl).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s line %d is not JSON; skipped", metrics_jsonl, i + 1)
            continue
        if not isinstance(record, dict) or not _is_number(record.get("step")):
            continue
        for key, value in record.items():
            if key != "step" and _is_number(value):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(float(record["step"]))
                ys.append(float(value))
    return {k: v for k, v in series.items() if len(v[0]) > 1}


def curves_figure(series: dict[str, tuple[list[float], list[float]]], empty: str = "no curves") -> Any:
    """One small panel per curve against `step`. Positive curves spanning over two decades
    (loss, lr) get a log y axis; the y axis never shows an offset ("1e-8 + 1.6931e-3"), and a
    curve flat to 1 part in 10^4 is drawn flat around its value, not as noise magnified."""
    ncols = max(1, min(4, len(series)))
    nrows = max(1, math.ceil(len(series) / ncols))
    fig = _figure(ncols, nrows, (3.2, 2.4))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (key, (xs, ys)) in zip(axes, series.items(), strict=False):
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None, linewidth=1)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        finite = [y for y in ys if math.isfinite(y)]
        if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False)
            lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
            scale = max(abs(lo), abs(hi))
            if hi - lo <= 1e-4 * scale or scale == 0:  # flat: a band of +-5% (+-1 around 0)
                pad = 0.05 * scale or 1.0
                ax.set_ylim(lo - pad, hi + pad)
    for ax in axes[len(series) :]:
        ax.set_axis_off()
    if not series:
        axes[0].text(0.5, 0.5, empty, ha="center", va="center")
    return fig


def curves_png(metrics_jsonl: str | Path, path: str | Path) -> Path:
    """PNG of the training curves of a metrics.jsonl (`read_curves`, `curves_figure`)."""
    path = Path(path)
    fig = curves_figure(read_curves(metrics_jsonl), f"no curves in\n{Path(metrics_jsonl).name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
