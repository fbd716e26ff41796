"""The encoder as one torch module: uint8 frames in, the stored tokens out.

`TokenNet` holds everything between the decoded frame and the stored numbers — scaling to
[0, 1], the model's mean/std normalisation, the timm backbone (its last block or a chosen
one) and the token selection (CLS, mean, pooled grid, all patches) — so that every runtime
computes the same function: torch runs it eagerly, OpenVINO and ONNX Runtime convert it
whole. Only the float16 cast of the result happens outside.

In torch fp32 it computes exactly what the encoder computed before runtimes were named
(same operations in the same order), so stores written then keep growing with equal bits.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.encode.identity import EncoderError
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


def build_backbone(cfg: EncoderConfig) -> nn.Module:
    """The timm model `cfg` names, seeded random init or its local checkpoint, in eval mode."""
    import timm

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
    return model.eval().requires_grad_(False)


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


def _pool_matrix(src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """(h*w, H*W): adaptive average pooling of an H x W grid to h x w as one matrix product,
    which every exporter understands (ONNX's pooling needs sides that divide evenly)."""
    eye = torch.eye(src[0] * src[1]).view(-1, 1, *src)  # one-hot grids (H*W, 1, H, W)
    return F.adaptive_avg_pool2d(eye, dst).flatten(1).T.contiguous()  # (h*w, H*W)


class TokenNet(nn.Module):
    """frames (B, S, S, 3) uint8 -> tokens (B, T, D) float32; T is 1 for cls/mean, h*w for
    grid:hxw, every patch for `patches`. `export=True` pools the grid by a matrix product
    (for ONNX); eager torch keeps `adaptive_avg_pool2d`, bit-equal to the encoder before."""

    def __init__(self, backbone: nn.Module, cfg: EncoderConfig, mean: tuple[float, ...], std: tuple[float, ...],
                 *, export: bool = False):
        super().__init__()
        self.backbone, self.layer, self.spec = backbone, cfg.layer, TokenSpec.parse(cfg.tokens)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.n_prefix = int(getattr(backbone, "num_prefix_tokens", 0))
        if self.spec.mode == "cls" and self.n_prefix == 0:
            raise EncoderError(f"{cfg.model!r} has no CLS token: use tokens 'mean' or 'grid:HxW'")
        self.export = export
        if export and self.spec.mode == "grid":
            with torch.no_grad():  # the patch grid's shape, from one blank frame
                _, grid = self._tokens(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
            self.register_buffer("pool", _pool_matrix(tuple(grid.shape[1:3]), self.spec.grid), persistent=False)

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(prefix tokens (B, P, D) or None, patch tokens (B, H, W, D))."""
        m = self.backbone
        if hasattr(m, "forward_intermediates") and self.layer != -1:
            out = m.forward_intermediates(
                x, indices=[self.layer], norm=True, stop_early=True, output_fmt="NLC",
                intermediates_only=True, return_prefix_tokens=True,
            )[0]
            spatial, prefix = (out if isinstance(out, tuple) else (out, None))
        else:
            feats = m.forward_features(x)
            if feats.ndim == 4:  # convnet: (B, C, H, W)
                return None, feats.permute(0, 2, 3, 1)
            n = self.n_prefix
            prefix, spatial = (feats[:, :n], feats[:, n:]) if n else (None, feats)
        if spatial.ndim == 4:  # NCHW from a hierarchical model
            return prefix, spatial.permute(0, 2, 3, 1)
        gh, gw = getattr(getattr(m, "patch_embed", None), "grid_size", (0, 0))
        if gh * gw != spatial.shape[1]:
            side = int(round(spatial.shape[1] ** 0.5))
            gh, gw = side, spatial.shape[1] // side
        return prefix, spatial.reshape(spatial.shape[0], gh, gw, spatial.shape[-1])

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float().div_(255)  # (B, 3, S, S)
        x = (x - self.mean) / self.std
        prefix, grid = self._tokens(x)  # grid: (B, H, W, D)
        grid = grid.float()
        mode = self.spec.mode
        if mode == "cls":
            return prefix[:, :1].float()
        if mode == "mean":
            return grid.mean(dim=(1, 2)).unsqueeze(1)
        if mode == "grid" and self.export:
            return torch.matmul(self.pool, grid.flatten(1, 2))  # (h*w, H*W) @ (B, H*W, D)
        if mode == "grid":
            pooled = F.adaptive_avg_pool2d(grid.permute(0, 3, 1, 2), self.spec.grid)  # (B, D, h, w)
            return pooled.flatten(2).transpose(1, 2)
        return grid.flatten(1, 2)  # patches
