"""The latent world model (LaWM): what a latent action is, and how it is learned.

Promise: `LaWM.latent(f_t, f_tk)` turns two frames' frozen-encoder features into a small
vector z (`latent_dim` = queries * code_dim numbers) that says what changed between them,
deterministically, and `decode(f_t, z)` turns f_t and such a z back into a prediction of
f_{t+k}. A checkpoint (`state_dict`) carries everything needed to reproduce both,
feature standardisation included.

Strategy, and why:

- **Standardised features.** Inputs and targets are `(f - feat_mean) / feat_std` with the
  store's per-dimension statistics (buffers, so they travel with the weights). Many
  encoder dimensions are near-constant; without this the loss is dominated by a few
  large ones. `feat_std` is clamped at 1e-3 so constant dimensions do not explode.
- **Inverse dynamics (IDM).** A few learned query tokens attend over both frames'
  tokens. Each frame is projected on its own (no mixing before attention) and tagged by
  a frame embedding: encoding the pair jointly leaked the future into z in public runs.
- **Bottleneck.** `vae`: per-query mean/log-variance, KL weighted by `kl_beta`. `vq`:
  nearest code in a codebook, straight-through gradients, codebook + commitment loss,
  and dead-code restarts every `vq_restart_every` training forwards (codes unused since
  the last restart are reset to encoder outputs of the current batch) against codebook
  collapse. Distances and losses are computed in float32, also under bf16 autocast.
- **Forward model (FDM).** A transformer over f_t's tokens, conditioned on z by AdaLN
  (z -> scale/shift of every norm, zero-initialised), predicting a *residual* on
  standardised f_t with a zero-initialised output layer: at step 0 the model is exactly
  "copy f_t", the baseline it must beat, and only the change has to be learned.
- **Leakage guards.** Separate token-space augmentation of the IDM's and the FDM's inputs
  (training only: Gaussian noise, and a share of tokens zeroed), and separate input
  projections for IDM and FDM: the decoder never shares an input pathway through which
  the latent could carry the future's fine details, and it can be reused alone (stage 2
  decodes ẑ with the frozen FDM).
- **Multi-frame IDM** (`idm_frames` > 2): the IDM also sees the frames between t and t+k
  (`f_mid`), each tagged by its own frame embedding, so z can say how the change happened.
- **Auxiliary heads.** With robot state, z -> (state_{t+k} - state_t) / state_delta_std,
  masked per row (human video has no state); with `action_weight`, a linear head z -> the
  standardised action chunk, masked per step and per row (only robot episodes that keep
  their actions). Both keep z anchored to control; the action head is what makes z carry
  the action rather than the largest change between the frames (LAOM, "What do latent
  action models actually learn?").
- **Instruction-conditioned FDM** (`fdm_instruction`): a bag of learned word embeddings
  joins z in the AdaLN condition, so z needs not spend capacity on the task.

Trade-off accepted: under DDP every rank sums code usage across ranks (one all-reduce of
`vq_codes` numbers per training forward) so that restarts are decided identically
everywhere; the restarted vectors come from rank 0's batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from model.text import Tokenizer
from schemas.training import LamModelConfig

FEATURE_STD_FLOOR = 1e-3  # near-constant feature dims: standardise without blowing up
STATE_STD_FLOOR = 1e-6
LOGVAR_RANGE = (-10.0, 10.0)
RESTART_NOISE = 1e-3  # relative jitter on restarted codes, so two restarts from one vector differ


@dataclass
class LatentOut:
    """What the IDM + bottleneck give for a batch of pairs."""

    z: torch.Tensor  # (B, Z) sampled (vae, training) or quantised (vq); what the FDM sees
    mu: torch.Tensor  # (B, Z) deterministic latent: vae mean / vq quantised vector (what labels store)
    reg: torch.Tensor  # () KL (vae: summed over Z, mean over batch) or VQ codebook + commitment loss
    codes: torch.Tensor | None  # (B, Q) int64 code indices (vq) or None


@dataclass
class LaWMOutput:
    """One training/eval forward: the loss to minimise and what to log."""

    loss: torch.Tensor  # () total loss
    parts: dict[str, torch.Tensor]  # detached scalars: forward, kl|vq, aux, copy, perplexity, usage
    z: torch.Tensor  # (B, Z)
    pred: torch.Tensor  # (B, T, D) predicted standardised f_{t+k}


class _AdaLNBlock(nn.Module):
    """Pre-norm transformer block whose norms are scaled/shifted by z (identity at init)."""

    def __init__(self, width: int, heads: int, z_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)
        self.mod = nn.Linear(z_dim, 4 * width)  # shift1, scale1, shift2, scale2
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        B, T, W = x.shape
        shift1, scale1, shift2, scale2 = self.mod(z).unsqueeze(1).chunk(4, dim=-1)  # each (B, 1, W)
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).view(B, T, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, T, W/H)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, T, W)))
        return x + self.drop(self.mlp(self.norm2(x) * (1 + scale2) + shift2))


class LaWM(nn.Module):
    """IDM -> bottleneck -> FDM over frozen-encoder features of shape (tokens, feature_dim)."""

    def __init__(self, cfg: LamModelConfig, tokens: int, feature_dim: int, state_dim: int = 0, *,
                 action_dim: int = 0, horizon: int = 0, vocab: list[str] | None = None) -> None:
        super().__init__()
        self.cfg, self.tokens, self.feature_dim, self.state_dim = cfg, tokens, feature_dim, state_dim
        # The action head exists where it can learn: action_weight > 0 and an action chunk's
        # shape (a store with robot actions). Without one (human video only) the LaWM trains
        # as without the head, and its card says so (action_dim 0).
        self.action_dim = action_dim if cfg.action_weight > 0 and horizon else 0
        self.horizon = horizon if self.action_dim else 0
        if cfg.fdm_instruction and not vocab:
            raise ValueError("fdm_instruction needs the store's vocabulary: pass vocab (model.text.build_vocab)")
        W, Q, C = cfg.width, cfg.queries, cfg.code_dim
        self.register_buffer("feat_mean", torch.zeros(feature_dim))
        self.register_buffer("feat_std", torch.ones(feature_dim))
        if state_dim > 0:
            self.register_buffer("state_delta_std", torch.ones(state_dim))
        if self.action_dim:
            self.register_buffer("action_mean", torch.zeros(self.action_dim))
            self.register_buffer("action_std", torch.ones(self.action_dim))

        # IDM: queries + the frames from t to t+k, each frame projected separately.
        self.idm_proj = nn.Linear(feature_dim, W)
        self.idm_pos = nn.Parameter(torch.randn(tokens, W) * 0.02)
        self.frame_emb = nn.Parameter(torch.randn(cfg.idm_frames, W) * 0.02)
        self.queries = nn.Parameter(torch.randn(Q, W) * 0.02)
        self.idm_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(W, cfg.heads, 4 * W, cfg.dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(cfg.idm_layers)
        )
        self.idm_norm = nn.LayerNorm(W)
        if cfg.bottleneck == "vae":
            self.idm_head = nn.Linear(W, 2 * C)  # -> mu, logvar per query
        else:
            self.idm_head = nn.Linear(W, C)
            # Scale of the head's outputs (LayerNorm'd inputs through a default Linear: var ~ 1/3).
            self.codebook = nn.Parameter(torch.randn(cfg.vq_codes, C) / math.sqrt(3))
            self.register_buffer("code_usage", torch.zeros(cfg.vq_codes))  # uses since the last restart
            self.register_buffer("vq_step", torch.zeros((), dtype=torch.long))  # training forwards so far

        # FDM: f_t's tokens, conditioned on z (and the instruction); predicts a residual on
        # standardised f_t.
        self.tokenizer = Tokenizer(vocab) if cfg.fdm_instruction else None
        self.fdm_lang = nn.EmbeddingBag(len(vocab), W, mode="mean") if vocab and cfg.fdm_instruction else None
        cond = self.latent_dim + (W if self.fdm_lang is not None else 0)
        self.fdm_proj = nn.Linear(feature_dim, W)
        self.fdm_pos = nn.Parameter(torch.randn(tokens, W) * 0.02)
        self.fdm_blocks = nn.ModuleList(_AdaLNBlock(W, cfg.heads, cond, cfg.dropout)
                                        for _ in range(cfg.fdm_layers))
        self.fdm_norm = nn.LayerNorm(W, elementwise_affine=False)
        self.fdm_final_mod = nn.Linear(cond, 2 * W)
        self.fdm_out = nn.Linear(W, feature_dim)
        for layer in (self.fdm_final_mod, self.fdm_out):  # start as the identity / "copy f_t"
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

        self.aux_head = nn.Linear(self.latent_dim, state_dim) if state_dim > 0 else None
        self.action_head = nn.Linear(self.latent_dim, self.horizon * self.action_dim) if self.action_dim else None

    @property
    def latent_dim(self) -> int:
        return self.cfg.queries * self.cfg.code_dim

    # ---- statistics ----------------------------------------------------------------------

    def set_feature_stats(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor) -> None:
        """Per-dimension feature mean/std (D,), e.g. from the store; std is floored at 1e-3."""
        mean_t = torch.as_tensor(np.asarray(mean, np.float32) if isinstance(mean, np.ndarray) else mean)
        std_t = torch.as_tensor(np.asarray(std, np.float32) if isinstance(std, np.ndarray) else std)
        for name, t in (("mean", mean_t), ("std", std_t)):
            if t.shape != (self.feature_dim,):
                raise ValueError(f"feature {name} has shape {tuple(t.shape)!r}, expected ({self.feature_dim},)")
        self.feat_mean.copy_(mean_t.float())
        self.feat_std.copy_(std_t.float().clamp_min(FEATURE_STD_FLOOR))

    def set_state_stats(self, delta_std: np.ndarray | torch.Tensor) -> None:
        """Per-dimension std (S,) of state_{t+k} - state_t: the aux head's target scale."""
        if self.state_dim == 0:
            raise ValueError("set_state_stats on a LaWM built with state_dim=0: pass state_dim to the constructor")
        t = torch.as_tensor(np.asarray(delta_std, np.float32) if isinstance(delta_std, np.ndarray) else delta_std)
        if t.shape != (self.state_dim,):
            raise ValueError(f"state delta std has shape {tuple(t.shape)!r}, expected ({self.state_dim},)")
        # NaN (stats from zero robot rows) means "unknown scale": use 1.
        self.state_delta_std.copy_(torch.nan_to_num(t.float(), nan=1.0).clamp_min(STATE_STD_FLOOR))

    def set_action_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Per-dimension mean/std (A,) of the robot actions: the action head's target scale."""
        if not self.action_dim:
            raise ValueError("set_action_stats on a LaWM without an action head (model.action_weight is 0)")
        for name, v in (("mean", mean), ("std", std)):
            if np.shape(v) != (self.action_dim,):
                raise ValueError(f"action {name} has shape {np.shape(v)!r}, expected ({self.action_dim},)")
        self.action_mean.copy_(torch.as_tensor(np.nan_to_num(np.asarray(mean, np.float32))))
        self.action_std.copy_(torch.as_tensor(np.nan_to_num(np.asarray(std, np.float32), nan=1.0)).clamp_min(1e-3))

    def standardize(self, f: torch.Tensor) -> torch.Tensor:
        """Raw features (..., T, D) of any float dtype -> float32 (f - mean) / std."""
        if f.shape[-2:] != (self.tokens, self.feature_dim):
            raise ValueError(f"features of shape {tuple(f.shape)!r}, expected (..., {self.tokens}, {self.feature_dim})")
        return (f.float() - self.feat_mean) / self.feat_std

    def _augment(self, x: torch.Tensor, sigma: float, drop: float) -> torch.Tensor:
        """Training-time token-space augmentation of standardised features (..., T, D)."""
        if not self.training:
            return x
        if sigma > 0:
            x = x + sigma * torch.randn_like(x)
        if drop > 0:
            x = x * (torch.rand(x.shape[:-1], device=x.device) >= drop).unsqueeze(-1).to(x.dtype)
        return x

    # ---- IDM + bottleneck ----------------------------------------------------------------

    def encode(self, f_t: torch.Tensor, f_tk: torch.Tensor, f_mid: torch.Tensor | None = None) -> LatentOut:
        """Raw features (B, T, D) of both frames (and (B, idm_frames - 2, T, D) of the frames
        between, for a multi-frame IDM) -> latent action (IDM + bottleneck)."""
        return self._encode(self.standardize(f_t), self.standardize(f_tk),
                            None if f_mid is None else self.standardize(f_mid))

    def _encode(self, x_t: torch.Tensor, x_tk: torch.Tensor, x_mid: torch.Tensor | None = None) -> LatentOut:
        B, Q, C = x_t.shape[0], self.cfg.queries, self.cfg.code_dim
        between = self.cfg.idm_frames - 2
        if between and (x_mid is None or x_mid.shape[1] != between):
            raise ValueError(f"this IDM sees {self.cfg.idm_frames} frames: pass f_mid of shape (B, {between}, T, D)"
                             f", got {None if x_mid is None else tuple(x_mid.shape)!r}")
        frames = [x_t, *(x_mid.unbind(1) if between else ()), x_tk]
        aug = (self.cfg.idm_noise, self.cfg.idm_token_drop)
        h = torch.cat([self.queries.expand(B, -1, -1)]  # (B, Q, W), then (B, T, W) per frame
                      + [self.idm_proj(self._augment(x, *aug)) + self.idm_pos + self.frame_emb[i]
                         for i, x in enumerate(frames)], dim=1)
        for layer in self.idm_layers:
            h = layer(h)
        e = self.idm_head(self.idm_norm(h[:, :Q])).float()  # (B, Q, 2C | C)
        if self.cfg.bottleneck == "vae":
            mu, logvar = e.chunk(2, dim=-1)  # (B, Q, C) each
            logvar = logvar.clamp(*LOGVAR_RANGE)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
            kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(dim=(1, 2)).mean()
            return LatentOut(z.reshape(B, Q * C), mu.reshape(B, Q * C), kl, None)
        return self._quantise(e)

    def _quantise(self, e: torch.Tensor) -> LatentOut:
        B, Q, C = e.shape
        flat = e.reshape(B * Q, C)  # (N, C) float32
        if self.training and self.cfg.vq_restart_every and self.vq_step > 0 \
                and int(self.vq_step) % self.cfg.vq_restart_every == 0:
            self.restart_dead_codes(flat)
        with torch.autocast(device_type=e.device.type, enabled=False), torch.no_grad():
            cb = self.codebook.float()
            dist2 = flat.square().sum(1, keepdim=True) - 2 * flat @ cb.T + cb.square().sum(1)  # (N, K)
            codes = dist2.argmin(dim=1)  # (N,)
        q = F.embedding(codes, self.codebook).float()  # (N, C); grads reach the codebook rows used
        reg = F.mse_loss(q, flat.detach()) + self.cfg.vq_beta * F.mse_loss(flat, q.detach())
        z = flat + (q - flat).detach()  # straight-through: the encoder gets the decoder's gradient
        if self.training:
            with torch.no_grad():
                counts = torch.bincount(codes, minlength=self.cfg.vq_codes).float()
                if dist.is_available() and dist.is_initialized():
                    dist.all_reduce(counts)  # identical usage (hence restarts) on every rank
                self.code_usage += counts
                self.vq_step += 1
        return LatentOut(z.reshape(B, Q * C), q.detach().reshape(B, Q * C), reg, codes.reshape(B, Q))

    @torch.no_grad()
    def restart_dead_codes(self, candidates: torch.Tensor) -> int:
        """Reset codes unused since the last restart to random rows of `candidates` (N, C); returns how many."""
        dead = self.code_usage == 0  # (K,)
        n = int(dead.sum())
        if n:
            pick = torch.randint(0, candidates.shape[0], (n,), device=candidates.device)
            new = candidates.detach().float()[pick]
            new = new + RESTART_NOISE * new.std().clamp_min(1e-6) * torch.randn_like(new)
            if dist.is_available() and dist.is_initialized():
                dist.broadcast(new, src=0)  # keep the codebook identical on every rank
            self.codebook.data[dead] = new.to(self.codebook.dtype)
        self.code_usage.zero_()
        return n

    # ---- FDM -----------------------------------------------------------------------------

    def decode(self, f_t: torch.Tensor, z: torch.Tensor, instruction: list[str | None] | None = None) -> torch.Tensor:
        """Raw f_t (B, T, D), z (B, Z) (and the instructions, for an instruction-conditioned
        FDM) -> predicted standardised f_{t+k} (B, T, D), float32."""
        return self._decode(self.standardize(f_t), z, instruction)

    def _condition(self, z: torch.Tensor, instruction: list[str | None] | None) -> torch.Tensor:
        if self.fdm_lang is None:
            return z
        assert self.tokenizer is not None
        if instruction is None or len(instruction) != z.shape[0]:
            raise ValueError("this FDM is conditioned on the instruction (fdm_instruction): pass one per pair")
        ids, offsets = self.tokenizer(list(instruction))
        return torch.cat([z, self.fdm_lang(ids.to(z.device), offsets.to(z.device)).to(z.dtype)], dim=1)

    def _decode(self, x_t: torch.Tensor, z: torch.Tensor, instruction: list[str | None] | None = None) -> torch.Tensor:
        if z.shape != (x_t.shape[0], self.latent_dim):
            raise ValueError(f"z of shape {tuple(z.shape)!r}, expected ({x_t.shape[0]}, {self.latent_dim})")
        c = self._condition(z, instruction)
        h = self.fdm_proj(self._augment(x_t, self.cfg.fdm_noise, self.cfg.fdm_token_drop)) + self.fdm_pos  # (B, T, W)
        for block in self.fdm_blocks:
            h = block(h, c)
        shift, scale = self.fdm_final_mod(c).unsqueeze(1).chunk(2, dim=-1)  # (B, 1, W) each
        delta = self.fdm_out(self.fdm_norm(h) * (1 + scale) + shift)  # (B, T, D)
        return x_t + delta.float()  # residual on the clean f_t: the noise only hides input details

    # ---- training / labelling ------------------------------------------------------------

    def forward(self, f_t: torch.Tensor, f_tk: torch.Tensor, state_delta: torch.Tensor | None = None,
                state_mask: torch.Tensor | None = None, *, f_mid: torch.Tensor | None = None,
                actions: torch.Tensor | None = None, action_mask: torch.Tensor | None = None,
                instruction: list[str | None] | None = None) -> LaWMOutput:
        """Raw features (B, T, D) of both frames (+ optional state change (B, S) and its row mask
        (B,); the frames between (B, idm_frames - 2, T, D); the action chunk (B, H, A) and its
        step mask (B, H), False for rows without actions; the instructions) -> loss."""
        x_t, x_tk = self.standardize(f_t), self.standardize(f_tk)
        lat = self._encode(x_t, x_tk, None if f_mid is None else self.standardize(f_mid))
        pred = self._decode(x_t, lat.z, instruction)
        forward_loss = F.mse_loss(pred, x_tk)
        reg_name, reg_weight = ("kl", self.cfg.kl_beta) if self.cfg.bottleneck == "vae" else ("vq", 1.0)
        loss = forward_loss + reg_weight * lat.reg
        parts = {"forward": forward_loss, reg_name: lat.reg, "copy": F.mse_loss(x_t, x_tk)}
        if self.aux_head is not None:
            # Always run the head when it exists, so DDP never sees an unused parameter.
            aux = self._aux_loss(lat.z, state_delta, state_mask)
            loss = loss + self.cfg.aux_weight * aux
            if state_delta is not None:
                parts["aux"] = aux
        if self.action_head is not None:
            act = self._action_loss(lat.z, actions, action_mask)
            loss = loss + self.cfg.action_weight * act
            if actions is not None:
                parts["action"] = act
        if lat.codes is not None:
            hist = torch.bincount(lat.codes.flatten(), minlength=self.cfg.vq_codes).float()
            p = hist / hist.sum()
            parts["perplexity"] = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
            parts["usage"] = (hist > 0).float().mean()
        return LaWMOutput(loss, {k: v.detach().float() for k, v in parts.items()}, lat.z, pred)

    def _aux_loss(self, z: torch.Tensor, state_delta: torch.Tensor | None,
                  state_mask: torch.Tensor | None) -> torch.Tensor:
        """Masked mean over rows of the per-row MSE of z -> standardised state change."""
        assert self.aux_head is not None
        pred = self.aux_head(z).float()  # (B, S)
        if state_delta is None:
            mask = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
            target = torch.zeros_like(pred)
        else:
            mask = torch.ones(z.shape[0], dtype=torch.bool, device=z.device) if state_mask is None \
                else state_mask.to(device=z.device, dtype=torch.bool)
            # Rows without state may hold NaN: zero them so their (masked-out) gradient stays 0, not NaN.
            target = torch.where(mask[:, None], state_delta.float() / self.state_delta_std, 0.0)
        per_row = (pred - target).square().mean(dim=1)  # (B,)
        return (per_row * mask).sum() / mask.sum().clamp_min(1)

    def _action_loss(self, z: torch.Tensor, actions: torch.Tensor | None,
                     action_mask: torch.Tensor | None) -> torch.Tensor:
        """Masked mean over valid chunk steps of the MSE of z -> standardised action chunk."""
        assert self.action_head is not None
        pred = self.action_head(z).float().view(-1, self.horizon, self.action_dim)  # (B, H, A)
        if actions is None or action_mask is None or actions.shape[1:] != pred.shape[1:]:
            return pred.sum() * 0.0  # no actions in this batch (human video only): keep the graph whole
        mask = action_mask.to(device=z.device, dtype=torch.float32)  # (B, H)
        target = (actions.float() - self.action_mean) / self.action_std
        per_step = (pred - torch.where(mask[..., None] > 0, target, 0.0)).square().mean(-1)  # (B, H)
        return (per_step * mask).sum() / mask.sum().clamp_min(1)

    @torch.inference_mode()
    def latent(self, f_t: torch.Tensor, f_tk: torch.Tensor, f_mid: torch.Tensor | None = None) -> torch.Tensor:
        """Deterministic latent action (B, Z) float32 in eval mode: what labelling stores."""
        was_training = self.training
        self.eval()
        try:
            return self.encode(f_t, f_tk, f_mid).mu.float()
        finally:
            self.train(was_training)
