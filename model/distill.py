"""Stage 2 trainer: distil a LaWAM policy from a store's latent-action labels and actions.

    card = distill("data/demo/store", "runs/lam", "runs/policy", DistillConfig())
    card = distill(..., cfg with model.subgoal=False)      # the behaviour-cloning ablation

Runs `model.loop` (the loop `train-lam` runs: progress, TensorBoard, exact resume,
`workers > 1` on Ray Train). Reads, from one pinned store version through the dataset layer:
every frame's features, instruction and state, the action chunk that starts there, and the
label of the LaWM's label set. The latent term trains on every episode that has a label
(human video included), the action term on robot episodes that keep their actions:
`action_fraction` < 1 turns the others into action-free video (chosen by a hash of the key).

The card carries the whole lineage: store uri + version, label set, the LaWM (folder, weights
hash, its own store version), encoder identity; the frozen LaWM's weights are inside the
policy's `model.safetensors`, so a policy folder is all `lawam eval` needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import CheckpointError, lawm_lineage, read_card
from model.data import collect, keeps_actions
from model.loop import ProgressFactory, run
from model.policy import KIND, LaWAMPolicy
from model.text import build_vocab
from model.train_lam import KIND as LAWM_KIND
from model.train_lam import load_lawm
from pipeline.store import FeatureStore
from pipeline.store.labels import LabelSet
from pipeline.store.pairs import PairQuery, PairReader
from pipeline.store.verify import label_problems
from schemas.cards import PolicyCard, StoppedRun
from schemas.errors import ConfigError
from schemas.training import DistillConfig, with_steps

log = logging.getLogger(__name__)

EVAL_PAIRS = 4096


class SelectionError(ConfigError):
    """The store version (or the selection of it) lacks what a policy trains on."""


@dataclass(frozen=True)
class DistillRecipe:
    """Stage 2 for `model.loop`."""

    cfg: DistillConfig
    lam_dir: str | None  # None: the ablation without subgoal (no LaWM, no labels)
    label_set: str | None
    kind: str = KIND

    def with_config(self, cfg: DistillConfig) -> DistillRecipe:
        return replace(self, cfg=cfg)

    def query(self, split: str) -> PairQuery:
        return PairQuery.from_config(self.cfg.pairs, split=split, label_set=self.label_set, all_frames=True)

    def build(self, store: FeatureStore, query: PairQuery, fresh: bool) -> LaWAMPolicy:
        reader = PairReader(store, query)
        if not reader.robot.any() or not reader.action_dim:
            raise SelectionError(f"store version {store.version} has no robot episodes with actions in this "
                             "selection: a policy needs some")
        tokens, dim = store.token_shape
        lawm = load_lawm(self.lam_dir)[0] if self.lam_dir else None
        all_instructions = store.episodes(["instruction"])["instruction"].to_pylist()
        model = LaWAMPolicy(self.cfg.model, tokens=tokens, feature_dim=dim, state_dim=reader.state_dim,
                            action_dim=reader.action_dim, horizon=self.cfg.pairs.horizon,
                            vocab=build_vocab(all_instructions), lawm=lawm)
        if not fresh:
            return model
        if lawm is not None:
            mean, std = lawm.feat_mean.numpy(), lawm.feat_std.numpy()
        else:
            mean, std = reader.feature_stats(seed=self.cfg.pairs.seed)
        sample = collect(store, query, max_pairs=8192)
        state_mean = state_std = z_mean = z_std = None
        m = sample["state_mask"]
        if m.any() and reader.state_dim:
            state_mean, state_std = sample["state_t"][m].mean(0), sample["state_t"][m].std(0)
        if "label" in sample and sample["label_mask"].any():
            z = sample["label"][sample["label_mask"]]
            z_mean, z_std = z.mean(0), z.std(0)
        elif lawm is not None:
            raise SelectionError(f"no labels of {self.label_set} in this selection: run `lawam label` first")
        model.set_stats(mean, std, state_mean, state_std, z_mean, z_std)
        return model

    def _keep(self, batch: dict, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(keeps_actions(batch["episode"], self.cfg.action_fraction)).to(device)

    def loss(self, model, core: LaWAMPolicy, batch: dict, device: torch.device):
        parts = model(batch, device, self._keep(batch, device))  # through DDP's forward when wrapped
        w = self.cfg.model
        loss = w.action_weight * parts["action"]
        if "latent" in parts:
            loss = loss + w.latent_weight * parts["latent"]
        return loss, {k: v.detach() for k, v in parts.items()}

    def note(self, row: dict[str, float]) -> str:
        latent = f", latent {row['latent']:.3f}" if "latent" in row else ""
        return f"action {row['action']:.4f}{latent}, {row['pairs_per_s']:.0f} pairs/s"

    def eval_data(self, store: FeatureStore) -> dict:
        held = collect(store, self.query("heldout"), EVAL_PAIRS)
        if not held:
            log.warning("no held-out episodes in this selection (pairs.heldout_fraction): metrics use training pairs")
            held = collect(store, self.query("train"), EVAL_PAIRS)
        return held

    @torch.no_grad()
    def evaluate(self, core: LaWAMPolicy, data: dict) -> dict[str, float]:
        """Held-out action L1 (robot rows with actions, every action kept), latent MSE and the
        subgoal's feature error against copying f_t."""
        if not data:
            return {}
        from model.data import to_torch

        device = next(core.parameters()).device
        batch = to_torch(data)
        ones = torch.ones(len(data["t"]), dtype=torch.bool, device=device)
        parts = core(batch, device, ones)
        out = {f"heldout_{k}": float(v) for k, v in parts.items()}
        if core.lawm is not None and "label" in data:
            f_t, f_tk = batch["f_t"].to(device), batch["f_tk"].to(device)
            pooled, _ = core.encode(f_t, batch["instruction"], batch["state_t"].to(device),
                                    batch["state_mask"].to(device))
            z = core.latent(pooled) * core.z_std + core.z_mean
            target = core.lawm.standardize(f_tk.float())
            pred = core.lawm.decode(f_t.float(), z, batch["instruction"])
            copy = core.lawm.standardize(f_t.float())
            m = batch["label_mask"].to(device)
            if m.any():
                out["subgoal_mse"] = float((pred[m] - target[m]).square().mean())
                out["copy_mse"] = float((copy[m] - target[m]).square().mean())
        return out

    def card(self, core: LaWAMPolicy, store: FeatureStore, weights_sha256: str) -> dict[str, Any]:
        reader = PairReader(store, self.query("train"))
        rates = {round(float(r), 6) for r in _control_rates(store, reader)}
        control_hz = self.cfg.pairs.action_rate or (rates.pop() if len(rates) == 1 else None)
        lawm = lawm_lineage(self.lam_dir) if self.lam_dir else None
        return {"label_set": self.label_set, "lawm": lawm, "state_dim": core.state_dim,
                "action_dim": core.action_dim, "horizon": core.horizon, "control_hz": control_hz,
                "vocab": core.tokenizer.vocab, "subgoal": self.cfg.model.subgoal,
                "action_fraction": self.cfg.action_fraction,
                "proprio": "the store's robot state (Meta-World: hand xyz + gripper)"}

    def plots(self, out: Path, metrics: dict[str, float]) -> None:
        from model.metrics import curves_png

        curves_png(out / "metrics.jsonl", out / "curves.png")


def _control_rates(store: FeatureStore, reader: PairReader) -> list[float]:
    rates = []
    for i in np.flatnonzero(reader.robot)[:64]:
        track = store.actions(int(reader.rows[i]))
        if track is not None and track.rate:
            rates.append(track.rate)
    return rates


def distill(store_uri: str, out_dir: str | Path, lam_dir: str | Path | None, cfg: DistillConfig | None = None, *,
            version: str | None = None, steps: int | None = None, resume: bool = False, force: bool = False,
            keep_version: bool = True, workers: int = 1, progress: ProgressFactory | bool | None = None,
            device: str = "auto", stop_at: int | None = None) -> PolicyCard | StoppedRun:
    """Train a LaWAM policy (or, with `cfg.model.subgoal=False`, the BC ablation) and return its card.

    `lam_dir` is the LaWM whose label set the policy distils (its labels must be in the store:
    `lawam label`, every one readable and finite, else a ConfigError says to relabel them with
    `--damaged`); it is not needed for the ablation."""
    cfg = cfg or DistillConfig()
    cfg = with_steps(cfg, steps)
    label_set = lam = None
    if cfg.model.subgoal:
        if lam_dir is None:
            raise CheckpointError("a LaWAM policy needs --labels (a train-lam output folder); "
                                  "--no-subgoal trains the ablation without one")
        load_lawm(lam_dir)  # the weights too: a damaged file fails here, named, before anything is written
        lineage = lawm_lineage(lam_dir)
        lam, label_set = lineage.dir, lineage.label_set
        store = FeatureStore.open(store_uri, version)
        LabelSet.open(store, label_set)  # fails with "run lawam label" when the set is not there
        problems = label_problems(store, [label_set])[0]
        if problems:
            bad = sorted({p.episode for p in problems if p.episode})
            raise ConfigError(f"label set {label_set} of store {store_uri!r} at {store.version} is not clean: the "
                              f"labels of {len(bad)} episode(s) are unreadable or hold NaN/inf ({problems[0]}); "
                              f"relabel them: `lawam label --store {store_uri} --lam {lam} --damaged`")
        if store.encoder is not None:
            store.encoder.require_same(read_card(lam, LAWM_KIND).encoder, ours=f"store {store_uri!r}",
                                       theirs=f"the LaWM in {lam}", fix="distil from a store of the LaWM's encoder")
        pairs = cfg.pairs.model_copy(update={"k_seconds": float(lineage.k_seconds)})
        cfg = cfg.model_copy(update={"pairs": pairs})
    recipe = DistillRecipe(cfg, lam, label_set)
    return run(recipe, store_uri, out_dir, version=version, resume=resume, force=force, keep_version=keep_version,
               workers=workers, progress=progress, device=device, stop_at=stop_at, name="distill",
               saved_config=DistillConfig.model_validate, steps=steps)


__all__ = ["DistillRecipe", "SelectionError", "distill", "keeps_actions"]
