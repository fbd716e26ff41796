"""The frozen vision encoder: frames in, float16 feature tokens out.

A timm model built from a name and, for real runs, a local checkpoint (there is no network
at run time). Its identity (`pipeline.encode.identity`) is what versions a feature store:
`FrozenEncoder.identity` is written into the store and an ingest into a store made by
another encoder is refused.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.encode.identity import EncoderError, encoder_identity
from schemas import EncoderConfig

log = logging.getLogger(__name__)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """safetensors, or a torch file read with `weights_only=True`: nothing is unpickled."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
        raise EncoderError(f"cannot read encoder checkpoint {str(path)!r}: {e}") from None
    for key in ("state_dict", "model"):  # common wrappers
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise EncoderError(f"{str(path)!r} holds no state dict")
    return sd


@dataclass(frozen=True)
class TokenSpec:
    mode: str  # cls | mean | grid | patches
    grid: tuple[int, int] | None = None

    @classmethod
    def parse(cls, tokens: str) -> TokenSpec:
        m = re.fullmatch(r"grid:(\d+)x(\d+)", tokens)
        if m:
            return cls("grid", (int(m.group(1)), int(m.group(2))))
        return cls(tokens)


class FrozenEncoder:
    """Built on the worker that uses it (an actor's __init__), never shipped by pickle.

    `encode(frames)` takes uint8 RGB frames already resized to `image_size` and returns
    float16 tokens `(n, T, D)`; T is 1 for cls/mean, H*W for grid:HxW, all patches for
    `patches`. Deterministic for a given identity (random init is seeded).
    """

    def __init__(self, cfg: EncoderConfig):
        import timm

        self.cfg = cfg
        self.tokens = TokenSpec.parse(cfg.tokens)
        self.identity = encoder_identity(cfg)
        torch.manual_seed(cfg.seed)
        try:
            model = timm.create_model(cfg.model, pretrained=False, num_classes=0, img_size=cfg.image_size)
        except TypeError:  # models without an img_size argument (convnets)
            model = timm.create_model(cfg.model, pretrained=False, num_classes=0)
        if cfg.checkpoint is not None:
            sd = _load_state_dict(Path(cfg.checkpoint))
            sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "fc.", "classifier."))}
            missing, unexpected = model.load_state_dict(sd, strict=False)
            if missing:
                raise EncoderError(
                    f"checkpoint {str(cfg.checkpoint)!r} does not fit {cfg.model!r}: "
                    f"{len(missing)} missing keys, e.g. {missing[:3]!r}"
                )
            if unexpected:
                log.warning("checkpoint has %d keys the model does not use, e.g. %s", len(unexpected), unexpected[:3])
        self.model = model.eval().requires_grad_(False)
        self.mean, self.std = self.identity.mean, self.identity.std
        want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise EncoderError("encoder.device is 'cuda' but no CUDA device is visible")
        self.device = torch.device("cuda" if want_cuda else "cpu")
        self.model.to(self.device)
        self._mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)

    @cached_property
    def token_shape(self) -> tuple[int, ...]:
        """(T, D) of one frame's output; computed on first use, not at start-up."""
        return tuple(self.encode(np.zeros((1, self.cfg.image_size, self.cfg.image_size, 3), np.uint8)).shape[1:])

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(prefix tokens (B, P, D) or None, patch tokens (B, H, W, D))."""
        m = self.model
        n_prefix = int(getattr(m, "num_prefix_tokens", 0))
        if hasattr(m, "forward_intermediates") and self.cfg.layer != -1:
            out = m.forward_intermediates(
                x, indices=[self.cfg.layer], norm=True, stop_early=True, output_fmt="NLC",
                intermediates_only=True, return_prefix_tokens=True,
            )[0]
            spatial, prefix = (out if isinstance(out, tuple) else (out, None))
        else:
            feats = m.forward_features(x)
            if feats.ndim == 4:  # convnet: (B, C, H, W)
                return None, feats.permute(0, 2, 3, 1)
            prefix, spatial = (feats[:, :n_prefix], feats[:, n_prefix:]) if n_prefix else (None, feats)
        if spatial.ndim == 4:  # NCHW from a hierarchical model
            return prefix, spatial.permute(0, 2, 3, 1)
        gh, gw = getattr(getattr(m, "patch_embed", None), "grid_size", (0, 0))
        if gh * gw != spatial.shape[1]:
            side = int(round(spatial.shape[1] ** 0.5))
            gh, gw = side, spatial.shape[1] // side
        return prefix, spatial.reshape(spatial.shape[0], gh, gw, spatial.shape[-1])

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        """frames (n, S, S, 3) uint8 -> tokens (n, T, D) float16."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames (n, H, W, 3), got {frames.dtype} {frames.shape}")
        x = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float().div_(255)  # (B, 3, S, S)
        x = (x - self._mean) / self._std
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            prefix, grid = self._tokens(x)  # grid: (B, H, W, D)
        grid = grid.float()
        mode = self.tokens.mode
        if mode == "cls":
            if prefix is None or prefix.shape[1] == 0:
                raise EncoderError(f"{self.cfg.model!r} has no CLS token: use tokens 'mean' or 'grid:HxW'")
            out = prefix[:, :1].float()
        elif mode == "mean":
            out = grid.mean(dim=(1, 2)).unsqueeze(1)
        elif mode == "grid":
            pooled = F.adaptive_avg_pool2d(grid.permute(0, 3, 1, 2), self.tokens.grid)  # (B, D, h, w)
            out = pooled.flatten(2).transpose(1, 2)
        else:  # patches
            out = grid.flatten(1, 2)
        return out.to(torch.float16).cpu().numpy()

