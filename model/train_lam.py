"""Stage 1 trainer: the latent world model, straight from a pinned store version.

    card = train_lam("data/demo/store", "runs/lam", LamConfig())        # one process
    card = train_lam(..., workers=2)                                     # same loop, Ray Train DDP

Runs `model.loop` (`LamRecipe`), whose promises it keeps: pinned store version, one loop
for one process and for Ray Train, exact resume, Ctrl-C checkpoints. Outputs in `out_dir`:
`model.safetensors` + `card.json` (lineage: store uri + version, encoder identity, config,
feature statistics, metrics, weights hash, label-set id), `metrics.jsonl`, TensorBoard
events in `tb/`, `metrics.png` and `curves.png`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import load_weights, read_card
from model.data import collect, keeps_actions
from model.lawm import LaWM
from model.loop import ProgressFactory, resolve_version, run
from model.text import build_vocab
from pipeline.store import FeatureStore
from pipeline.store.pairs import PairQuery, PairReader
from schemas.cards import LAWM, LawmCard, StoppedRun
from schemas.training import LamConfig, with_steps

log = logging.getLogger(__name__)

KIND = LAWM  # the kind of card a LaWM folder holds
EVAL_PAIRS = 4096  # held-out pairs per evaluation (and train pairs for the probe's fit)


def shaped_model(cfg: LamConfig, store: FeatureStore, reader: PairReader) -> LaWM:
    """An untrained LaWM shaped for the store: its tokens, state, action chunk and vocabulary."""
    tokens, dim = store.token_shape
    vocab = build_vocab(store.episodes()["instruction"].to_pylist()) if cfg.model.fdm_instruction else None
    return LaWM(cfg.model, tokens=tokens, feature_dim=dim, state_dim=reader.state_dim,
                action_dim=reader.action_dim, horizon=cfg.pairs.horizon, vocab=vocab)


def build_model(cfg: LamConfig, store: FeatureStore, reader: PairReader) -> LaWM:
    """A fresh LaWM sized to the store's tokens, with feature (and state-change, action)
    statistics of the training split."""
    model = shaped_model(cfg, store, reader)
    if cfg.model.action_weight > 0 and not model.action_dim:
        log.info("no action track in the store: the LaWM trains without its action head (action_weight unused)")
    mean, std = reader.feature_stats(seed=cfg.pairs.seed)
    model.set_feature_stats(mean, std)
    if reader.state_dim or model.action_dim:
        sample = collect(store, PairQuery.from_config(cfg.pairs, split="train", kinds=("robot",)), max_pairs=4096)
        if sample and reader.state_dim and sample["state_mask"].any():
            m = sample["state_mask"]
            model.set_state_stats((sample["state_tk"][m] - sample["state_t"][m]).std(0))
        if sample and model.action_dim and sample["action_mask"].any():
            a = sample["actions"][sample["action_mask"]]  # (valid steps, A)
            model.set_action_stats(a.mean(0), a.std(0))
    return model


def load_lawm(lam_dir: str | Path) -> tuple[LaWM, LawmCard]:
    """A trained LaWM (eval mode) and its card."""
    card = read_card(lam_dir, KIND)
    cfg = LamConfig.model_validate(card.config)
    tokens, dim = card.token_shape
    model = LaWM(cfg.model, tokens=tokens, feature_dim=dim, state_dim=card.state_dim,
                 action_dim=card.action_dim, horizon=card.horizon, vocab=card.vocab)
    load_weights(model, lam_dir)
    return model.eval(), card


@dataclass(frozen=True)
class LamRecipe:
    """Stage 1 for `model.loop`: LaWM forward loss (+ bottleneck, + auxiliary state change)."""

    cfg: LamConfig
    kind: str = KIND

    def with_config(self, cfg: LamConfig) -> LamRecipe:
        return replace(self, cfg=cfg)

    def query(self, split: str) -> PairQuery:
        return PairQuery.from_config(self.cfg.pairs, split=split, between=self.cfg.model.idm_frames - 2)

    def build(self, store: FeatureStore, query: PairQuery, fresh: bool) -> LaWM:
        reader = PairReader(store, query)
        if fresh:
            return build_model(self.cfg, store, reader)
        return shaped_model(self.cfg, store, reader)

    def loss(self, model, core: LaWM, batch: dict, device: torch.device):
        f_t, f_tk = batch["f_t"].to(device), batch["f_tk"].to(device)
        delta = mask = actions = action_mask = None
        if core.state_dim:
            delta = (batch["state_tk"] - batch["state_t"]).to(device)
            mask = batch["state_mask"].to(device)
        if core.action_dim:
            keep = keeps_actions(batch["episode"], self.cfg.model.action_fraction)  # (B,) by episode key
            actions = batch["actions"].to(device)
            action_mask = (batch["action_mask"] & (batch["robot"] & torch.from_numpy(keep))[:, None]).to(device)
        f_mid = batch["f_mid"].to(device) if "f_mid" in batch else None
        res = model(f_t, f_tk, delta, mask, f_mid=f_mid, actions=actions, action_mask=action_mask,
                    instruction=batch["instruction"] if core.fdm_lang is not None else None)
        return res.loss, res.parts

    def note(self, row: dict[str, float]) -> str:
        return f"loss {row['loss']:.4f} (copy {row['copy']:.3f}), {row['pairs_per_s']:.0f} pairs/s"

    def eval_data(self, store: FeatureStore) -> tuple[dict, dict]:
        return collect(store, self.query("heldout"), EVAL_PAIRS), collect(store, self.query("train"), EVAL_PAIRS)

    def evaluate(self, core: LaWM, data: tuple[dict, dict]) -> dict[str, float]:
        from model.metrics import lawm_metrics

        heldout, train_probe = data
        if not heldout:
            log.warning("no held-out episodes in this selection (pairs.heldout_fraction): metrics use training pairs")
            heldout = train_probe
        metrics = {k: float(v) for k, v in lawm_metrics(core, heldout, train_probe).items()}
        metrics["heldout_is_train"] = float(heldout is train_probe)
        return metrics

    def card(self, core: LaWM, store: FeatureStore, weights_sha256: str) -> dict[str, Any]:
        return {"state_dim": core.state_dim, "latent_dim": core.latent_dim, "k_seconds": self.cfg.pairs.k_seconds,
                "action_dim": core.action_dim, "horizon": core.horizon,
                "vocab": core.tokenizer.vocab if core.tokenizer is not None else None,
                "feature_mean": core.feat_mean.tolist(), "feature_std": core.feat_std.tolist()}
        # label_set: derived by LawmCard from the weights and these fields (`label_shaping`)

    def plots(self, out: Path, metrics: dict[str, float]) -> None:
        from model.metrics import curves_png, plot_metrics

        plot_metrics(metrics, out / "metrics.png")
        curves_png(out / "metrics.jsonl", out / "curves.png")


def train_lam(store_uri: str, out_dir: str | Path, cfg: LamConfig | None = None, *, version: str | None = None,
              steps: int | None = None, resume: bool = False, force: bool = False, keep_version: bool = True,
              workers: int = 1, progress: ProgressFactory | bool | None = None, device: str = "auto",
              stop_at: int | None = None) -> LawmCard | StoppedRun:
    """Train a LaWM on the store at `version` (default: its newest commit) and return its card.

    `progress` is a progress-bar factory such as `pipeline.progress.progress_bar` (the CLI
    passes it); `workers > 1` runs on the Ray instance already started (or starts a local one).
    `resume`, `force` and `keep_version` as in `model.loop.run`."""
    cfg = cfg or LamConfig()
    cfg = with_steps(cfg, steps)
    return run(LamRecipe(cfg), store_uri, out_dir, version=version, resume=resume, force=force,
               keep_version=keep_version, workers=workers, progress=progress, device=device, stop_at=stop_at,
               name="train-lam", saved_config=LamConfig.model_validate, steps=steps)


__all__ = ["LamRecipe", "build_model", "load_lawm", "resolve_version", "train_lam"]
