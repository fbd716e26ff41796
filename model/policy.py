"""The LaWAM policy: predict the latent action, imagine the subgoal with the frozen LaWM, act.

    ẑ = latent_head(trunk(f_t, instruction, proprio))      distilled from the label z_t
    ŝ = FDM(f_t, ẑ)                                         the frozen LaWM decoder: a latent subgoal
    a_{t:t+H} = action_head(trunk, ŝ − f_t, proprio)        L1 regression or flow matching

- f_t are the stored frozen-encoder tokens (T, D), standardised with the LaWM's statistics.
- The instruction is a mean of learned word embeddings over a vocabulary built from the
  store's instructions (lower-cased words; unknown words share one id). Nothing is downloaded.
- Proprioception is the robot state the store holds (for Meta-World: hand xyz + gripper);
  an episode without it (human video) gets a learned "no state" embedding instead.
- `subgoal=False` is the ablation: the same trunk and action head with no ŝ and no latent term.

At inference (`PolicyRunner.act`) one trunk pass, one decoder pass and one action-head pass
(or `flow_steps` small head passes) give a chunk: no pixels are generated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.checkpoint import load_weights, read_card
from model.lawm import LaWM
from model.text import Tokenizer, build_vocab
from schemas.cards import POLICY, PolicyCard
from schemas.training import DistillConfig, LamConfig, PolicyModelConfig

KIND = POLICY  # the kind of card a policy folder holds


class LaWAMPolicy(nn.Module):
    """(f_t, instruction, proprio) -> (standardised ẑ, action chunk)."""

    def __init__(self, cfg: PolicyModelConfig, *, tokens: int, feature_dim: int, state_dim: int,
                 action_dim: int, horizon: int, vocab: list[str], lawm: LaWM | None) -> None:
        super().__init__()
        if cfg.subgoal and lawm is None:
            raise ValueError("a policy with a subgoal needs the LaWM")
        self.cfg, self.tokens, self.feature_dim = cfg, tokens, feature_dim
        self.state_dim, self.action_dim, self.horizon = state_dim, action_dim, horizon
        self.tokenizer = Tokenizer(vocab)
        W = cfg.width
        self.register_buffer("feat_mean", torch.zeros(feature_dim))
        self.register_buffer("feat_std", torch.ones(feature_dim))
        self.register_buffer("state_mean", torch.zeros(max(state_dim, 1)))
        self.register_buffer("state_std", torch.ones(max(state_dim, 1)))
        self.in_proj = nn.Linear(feature_dim, W)
        self.pos = nn.Parameter(torch.randn(tokens, W) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, W) * 0.02)
        self.instr = nn.EmbeddingBag(len(vocab), W, mode="mean")
        self.state_proj = nn.Linear(max(state_dim, 1), W)
        self.no_state = nn.Parameter(torch.zeros(W))
        self.trunk = nn.ModuleList(
            nn.TransformerEncoderLayer(W, cfg.heads, 2 * W, cfg.dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(W)
        self.lawm = lawm
        if lawm is not None:
            lawm.requires_grad_(False).eval()
            Z = lawm.latent_dim
            self.register_buffer("z_mean", torch.zeros(Z))
            self.register_buffer("z_std", torch.ones(Z))
            self.latent_head = nn.Sequential(nn.Linear(W, W), nn.GELU(), nn.Linear(W, Z))
        cond = 2 * W + (tokens * cfg.subgoal_dim if cfg.subgoal else 0)
        if cfg.subgoal:
            self.sub_proj = nn.Linear(feature_dim, cfg.subgoal_dim)
        out = horizon * action_dim
        flow = cfg.action_head == "flow"
        self.action_head = nn.Sequential(
            nn.Linear(cond + (out + 1 if flow else 0), cfg.hidden), nn.GELU(),
            nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(),
            nn.Linear(cfg.hidden, out),
        )

    def train(self, mode: bool = True) -> LaWAMPolicy:
        super().train(mode)
        if self.lawm is not None:
            self.lawm.eval()  # frozen: no input noise, no dropout, ever
        return self

    def set_stats(self, feat_mean, feat_std, state_mean=None, state_std=None, z_mean=None, z_std=None) -> None:
        def put(name: str, value) -> None:
            getattr(self, name).copy_(torch.as_tensor(np.asarray(value, np.float32)))

        put("feat_mean", feat_mean)
        put("feat_std", np.maximum(np.asarray(feat_std, np.float32), 1e-3))
        if state_mean is not None and self.state_dim:
            put("state_mean", state_mean)
            put("state_std", np.maximum(np.asarray(state_std, np.float32), 1e-3))
        if z_mean is not None and self.lawm is not None:
            put("z_mean", z_mean)
            put("z_std", np.maximum(np.asarray(z_std, np.float32), 1e-3))

    # ---- the three passes ------------------------------------------------------------------

    def encode(self, f_t: torch.Tensor, instruction: list[str | None], state: torch.Tensor | None,
               state_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (pooled trunk output (B, W), proprio embedding (B, W))."""
        B = f_t.shape[0]
        x = (f_t.float() - self.feat_mean) / self.feat_std
        h = self.in_proj(x) + self.pos
        ids, offsets = self.tokenizer(instruction)
        lang = self.instr(ids.to(f_t.device), offsets.to(f_t.device))  # (B, W)
        if self.state_dim and state is not None and state.shape[-1] == self.state_dim:
            s = self.state_proj((state.float() - self.state_mean) / self.state_std)
            mask = torch.ones(B, dtype=torch.bool, device=f_t.device) if state_mask is None else state_mask
            prop = torch.where(mask[:, None], s, self.no_state.expand(B, -1))
        else:
            prop = self.no_state.expand(B, -1)
        h = torch.cat([self.cls.expand(B, 1, -1) + lang[:, None], prop[:, None], h], dim=1)
        for layer in self.trunk:
            h = layer(h)
        return self.norm(h[:, 0]), prop

    def latent(self, pooled: torch.Tensor) -> torch.Tensor:
        """Standardised ẑ (B, Z)."""
        return self.latent_head(pooled).float()

    def subgoal(self, f_t: torch.Tensor, z_std: torch.Tensor, instruction: list[str | None]) -> torch.Tensor:
        """ŝ − standardised f_t, projected: (B, T * subgoal_dim)."""
        assert self.lawm is not None
        z = z_std * self.z_std + self.z_mean
        s_hat = self.lawm.decode(f_t.float(), z, instruction)  # standardised f̂_{t+k}
        change = s_hat - self.lawm.standardize(f_t.float())
        return self.sub_proj(change).flatten(1)

    def condition(self, f_t, instruction, state, state_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(action-head condition (B, C), standardised ẑ or None)."""
        pooled, prop = self.encode(f_t, instruction, state, state_mask)
        parts, z_hat = [pooled, prop], None
        if self.lawm is not None:
            z_hat = self.latent(pooled)
        if self.cfg.subgoal:
            parts.append(self.subgoal(f_t, z_hat, instruction))
        return torch.cat(parts, dim=1), z_hat

    def chunk(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The action chunk (B, H, A) for a condition."""
        B, out = cond.shape[0], self.horizon * self.action_dim
        if self.cfg.action_head == "l1":
            return self.action_head(cond).view(B, self.horizon, self.action_dim)
        a = torch.randn(B, out, generator=generator, device=cond.device) if generator is not None \
            else torch.zeros(B, out, device=cond.device)
        n = self.cfg.flow_steps
        for i in range(n):  # Euler from noise (tau = 0) to the action (tau = 1)
            tau = torch.full((B, 1), i / n, device=cond.device)
            a = a + self.action_head(torch.cat([cond, a, tau], dim=1)) / n
        return a.view(B, self.horizon, self.action_dim)

    def forward(self, batch: dict, device: torch.device, action_keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """Latent term (rows with a label) and action term (rows of `action_keep`, masked steps)."""
        f_t = batch["f_t"].to(device)
        state_mask = batch["state_mask"].to(device) & action_keep
        cond, z_hat = self.condition(f_t, batch["instruction"], batch["state_t"].to(device), state_mask)
        parts: dict[str, torch.Tensor] = {}
        if z_hat is not None and "label" in batch:
            target = (batch["label"].to(device) - self.z_mean) / self.z_std
            m = batch["label_mask"].to(device).float()
            parts["latent"] = ((z_hat - target).square().mean(1) * m).sum() / m.sum().clamp_min(1)
        actions = batch["actions"].to(device)
        mask = (batch["action_mask"].to(device) & (batch["robot"].to(device) & action_keep)[:, None]).float()
        B = actions.shape[0]
        if actions.shape[-1] != self.action_dim:  # a selection without robot episodes (human video only)
            actions = torch.zeros(B, self.horizon, self.action_dim, device=device)
            mask = torch.zeros(B, self.horizon, device=device)
        if self.cfg.action_head == "l1":
            err = (self.chunk(cond) - actions).abs().mean(-1)  # (B, H)
        else:
            a1 = actions.reshape(B, -1)
            a0 = torch.randn_like(a1)
            tau = torch.rand(B, 1, device=device)
            v = self.action_head(torch.cat([cond, tau * a1 + (1 - tau) * a0, tau], dim=1))
            err = (v - (a1 - a0)).square().view(B, self.horizon, self.action_dim).mean(-1)
        parts["action"] = (err * mask).sum() / mask.sum().clamp_min(1)
        return parts


def policy_from_card(card: PolicyCard) -> LaWAMPolicy:
    """An untrained policy shaped as the card says (the LaWM inside is shaped from its config)."""
    cfg = DistillConfig.model_validate(card.config)
    tokens, dim = card.token_shape
    lawm = None
    if card.lawm is not None:
        lam_cfg = LamConfig.model_validate(card.lawm.config)
        lawm = LaWM(lam_cfg.model, tokens=tokens, feature_dim=dim, state_dim=card.lawm.state_dim,
                    action_dim=card.lawm.action_dim, horizon=card.lawm.horizon, vocab=card.lawm.vocab)
    return LaWAMPolicy(cfg.model, tokens=tokens, feature_dim=dim, state_dim=card.state_dim,
                       action_dim=card.action_dim, horizon=card.horizon, vocab=card.vocab, lawm=lawm)


class PolicyRunner:
    """A trained policy at batch 1: `act(features, instruction, proprio) -> (H, A)` chunk."""

    def __init__(self, model: LaWAMPolicy, card: PolicyCard, device: str = "cpu") -> None:
        self.model, self.card = model.eval().to(device), card
        self.device = torch.device(device)
        self.horizon, self.action_dim = model.horizon, model.action_dim
        # The rate the chunk's actions were recorded at (None in the card: sources of mixed rates).
        self.control_hz = float(card.control_hz) if card.control_hz else float("nan")
        self._gen = torch.Generator(device=self.device).manual_seed(0)

    @torch.inference_mode()
    def act(self, features: np.ndarray, instruction: str, proprio: np.ndarray | None) -> np.ndarray:
        f = torch.from_numpy(np.asarray(features, np.float32)).to(self.device)[None]
        state = None if proprio is None else torch.from_numpy(np.asarray(proprio, np.float32)).to(self.device)[None]
        cond, _ = self.model.condition(f, [instruction], state, None)
        gen = self._gen if self.model.cfg.action_head == "flow" else None
        if gen is not None:
            gen.manual_seed(0)  # the same features give the same chunk
        return self.model.chunk(cond, gen)[0].float().cpu().numpy()


def load_policy(run_dir: str | Path, device: str = "cpu") -> PolicyRunner:
    """A trained policy (weights and card of `lawam distill`'s output folder), ready to act."""
    card = read_card(run_dir, KIND)
    model = policy_from_card(card)
    load_weights(model, run_dir)
    return PolicyRunner(model, card, device)


__all__ = ["KIND", "LaWAMPolicy", "PolicyRunner", "Tokenizer", "build_vocab", "load_policy", "policy_from_card"]
