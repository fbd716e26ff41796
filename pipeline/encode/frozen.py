"""The frozen vision encoder: frames in, float16 feature tokens out, on the runtime its
identity names.

A timm model built from a name and, for real runs, a local checkpoint (there is no network
at run time), wrapped with its preprocessing and token selection into one module
(`pipeline.encode.tokens.TokenNet`), then handed to one runtime — one small module each:

- `torch_eager`  torch eager, fp32, or bf16 autocast (on a CPU or CUDA)
- `openvino`     converted on the worker (cached on disk), bf16 or fp32 inference
- `onnxruntime`  exported to ONNX on the worker, fp32

Its identity (`pipeline.encode.identity`) is what versions a feature store and names the
runtime and precision: `FrozenEncoder.identity` is written into the store, and an ingest
into a store of another encoder — or of other numerics — is refused. The runtime a config
names is the one that runs: a missing package fails with the command that installs it,
never by falling back to another runtime (that would write other numbers under the name).
"""

from __future__ import annotations

import logging
import time
from functools import cached_property

import numpy as np
import torch

from pipeline.encode.identity import EncoderError, encoder_identity, resolve_numerics
from pipeline.encode.tokens import TokenNet, TokenSpec, build_backbone
from schemas import EncoderConfig

log = logging.getLogger(__name__)

__all__ = ["FrozenEncoder", "TokenSpec"]


class FrozenEncoder:
    """Built on the worker that uses it (an actor's __init__), never shipped by pickle.

    `encode(frames)` takes uint8 RGB frames already resized to `image_size` and returns
    float16 tokens `(n, T, D)`; T is 1 for cls/mean, H*W for grid:HxW, all patches for
    `patches`. Deterministic for a given identity (random init is seeded). `runtime` and
    `precision` of `auto` are resolved as for a new store (`resolve_numerics`); the ingest
    resolves them against its store first and builds from the result.
    `build_seconds` is what building (and converting) cost.
    """

    def __init__(self, cfg: EncoderConfig):
        t0 = time.perf_counter()
        if "auto" in (cfg.runtime, cfg.precision):
            cfg = resolve_numerics(cfg)
        self.cfg = cfg
        self.tokens = TokenSpec.parse(cfg.tokens)
        self.identity = encoder_identity(cfg)
        self.mean, self.std = self.identity.mean, self.identity.std
        want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and cfg.runtime == "torch"
                                             and torch.cuda.is_available())
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise EncoderError("encoder.device is 'cuda' but no CUDA device is visible")
        self.device = torch.device("cuda" if want_cuda else "cpu")
        backbone = build_backbone(cfg)
        self.runtime = _build_runtime(cfg, backbone, self.identity, self.device)
        self.build_seconds = time.perf_counter() - t0
        log.info("encoder %s built in %.1f s", self.identity.describe(), self.build_seconds)

    @cached_property
    def token_shape(self) -> tuple[int, ...]:
        """(T, D) of one frame's output; computed on first use, not at start-up."""
        return tuple(self.encode(np.zeros((1, self.cfg.image_size, self.cfg.image_size, 3), np.uint8)).shape[1:])

    def set_threads(self, n: int) -> None:
        """CPU threads of the next `encode` calls (the ingest's `ThreadTuner` picks them)."""
        self.runtime.set_threads(n)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """frames (n, S, S, 3) uint8 -> tokens (n, T, D) float16."""
        size = self.cfg.image_size
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames (n, H, W, 3), got {frames.dtype} {frames.shape}")
        if frames.shape[1:3] != (size, size):
            raise ValueError(f"expected frames of {size}x{size} px (encoder.image_size), got {frames.shape[1:3]}")
        return self.runtime(np.ascontiguousarray(frames))


def _build_runtime(cfg: EncoderConfig, backbone: torch.nn.Module, identity, device: torch.device):
    """The dispatcher: one module per runtime, imported only when named."""
    if cfg.runtime == "torch":
        from pipeline.encode.torch_eager import TorchRuntime

        return TorchRuntime(TokenNet(backbone, cfg, identity.mean, identity.std), device, cfg.precision)
    if cfg.runtime == "openvino":
        from pipeline.encode.openvino import OpenVinoRuntime

        return OpenVinoRuntime(TokenNet(backbone, cfg, identity.mean, identity.std), identity)
    if cfg.runtime == "onnxruntime":
        from pipeline.encode.onnxruntime import OnnxRuntime

        return OnnxRuntime(TokenNet(backbone, cfg, identity.mean, identity.std, export=True), identity)
    raise EncoderError(f"encoder.runtime {cfg.runtime!r} is not one of torch, openvino, onnxruntime")
