"""The encoder's identity, computed from its config without building it (no torch import for
the cheap part): what versions a feature store, and how a recorded identity is turned back
into the config that rebuilds the encoder (evaluation encodes live frames exactly as the
training features were encoded).

`resolve_numerics` turns `runtime: auto` / `precision: auto` into what will compute the
features, before anything is built: the identity names them, so it must know them up front.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from pathlib import Path

from pydantic import ValidationError

from pipeline.sources.hashing import file_digest
from schemas import EncoderConfig
from schemas.errors import ConfigError
from schemas.identity import EncoderIdentity, random_init_weights

log = logging.getLogger(__name__)

# The CPU runtime `auto` picks: the fastest that benchmarks/bench_encoder.py measured on this
# project's machines (vit_small_patch14_dinov2 at 224 px, batch 16; see the README).
CPU_RUNTIME = "openvino"

class EncoderError(ConfigError):
    """The encoder cannot be built as configured (unknown model, unreadable checkpoint): a
    config error (exit 2), never retried."""



def config_weights(cfg: EncoderConfig) -> str:
    """The `weights` field of `cfg`'s identity: the checkpoint's digest (cached per file
    version, so a no-op ingest does not re-read it) or the random-init seed."""
    if cfg.checkpoint is None:
        return random_init_weights(cfg.seed)
    if not Path(cfg.checkpoint).is_file():
        raise EncoderError(f"encoder checkpoint {str(cfg.checkpoint)!r} does not exist")
    return file_digest(str(cfg.checkpoint))  # "sha256:..."


@cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), read from /proc/cpuinfo:
    where it does not, bf16 is emulated and slower than fp32, so `precision: auto` is fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_numerics(cfg: EncoderConfig, *, stored: EncoderIdentity | None = None,
                     cuda: Callable[[], bool] = _cuda_visible) -> EncoderConfig:
    """`cfg` with `runtime` and `precision` made concrete (and `device: cpu` for the runtimes
    that run on the CPU only), decided before anything is built:

    - runtime `auto`: the runtime of `stored` (the store's own identity) when there is one, so
      a store keeps being written with the numerics it holds; else torch on CUDA, `CPU_RUNTIME`
      on a CPU.
    - precision `auto`: the store's when the runtime is the store's; fp32 for onnxruntime;
      bf16 on CUDA and on a CPU that computes it natively (`cpu_has_bf16`); fp32 otherwise.

    `cuda` is asked only when the answer matters (torch is then imported): a no-op ingest of
    an existing store stays torch-free."""
    runtime, precision = cfg.runtime, cfg.precision

    def on_cuda() -> bool:  # asked only when it decides something
        return cfg.device == "cuda" or (cfg.device == "auto" and cuda())

    if runtime == "auto":
        if stored is not None and stored.runtime != "torch" and cfg.device == "cuda":
            raise EncoderError(f"the store holds features computed by {stored.numerics}, which runs on the CPU: "
                               "set encoder.device: auto to keep adding to it, or start a new store to encode "
                               "on CUDA")
        runtime = stored.runtime if stored is not None else ("torch" if on_cuda() else CPU_RUNTIME)
    if precision == "auto":
        if stored is not None and stored.runtime == runtime:
            precision = stored.precision
        elif runtime == "onnxruntime":
            precision = "fp32"
        else:
            precision = "bf16" if (runtime == "torch" and on_cuda()) or cpu_has_bf16() else "fp32"
    device = "cpu" if runtime != "torch" and cfg.device == "auto" else cfg.device
    try:
        return EncoderConfig.model_validate({**cfg.model_dump(), "runtime": runtime, "precision": precision,
                                             "device": device})
    except ValidationError as e:
        raise EncoderError(f"encoder: {e.errors()[0]['msg']}") from None


def encoder_identity(cfg: EncoderConfig) -> EncoderIdentity:
    """Everything that changes the numbers stored (batch size and device do not), computed
    without building the model: a no-op ingest checks it against the store in milliseconds.
    `runtime`/`precision: auto` are resolved for a new store (`resolve_numerics`)."""
    import timm

    if "auto" in (cfg.runtime, cfg.precision):
        cfg = resolve_numerics(cfg)

    if not timm.is_model(cfg.model):
        raise EncoderError(f"unknown timm model {cfg.model!r} (see timm.list_models())")
    pretrained = timm.models.get_pretrained_cfg(cfg.model)
    mean = getattr(pretrained, "mean", None) or (0.485, 0.456, 0.406)
    std = getattr(pretrained, "std", None) or (0.229, 0.224, 0.225)
    return EncoderIdentity(model=cfg.model, weights=config_weights(cfg), image_size=cfg.image_size,
                           mean=tuple(float(x) for x in mean), std=tuple(float(x) for x in std),
                           tokens=cfg.tokens, layer=cfg.layer, runtime=cfg.runtime, precision=cfg.precision)


def encoder_config_from_identity(identity: EncoderIdentity, checkpoint: Path | None = None, *,
                                 device: str = "auto") -> EncoderConfig:
    """The `EncoderConfig` that rebuilds the encoder an identity (from a store or a model card)
    names, so evaluation encodes live frames exactly as the training features were encoded —
    with the runtime and precision that computed them.

    A random-init identity carries its seed; a `sha256:` identity needs `checkpoint`, a file
    whose digest matches. The rebuilt config's identity must equal `identity` field for field
    (a timm upgrade that changed the model's mean/std is refused, not silently used).
    """
    weights, seed, ckpt = identity.weights, identity.seed, None
    if seed is None and weights.startswith("sha256:"):
        if checkpoint is None:
            raise EncoderError(f"encoder {identity.model!r} was built from a checkpoint ({weights[:19]}...): "
                               "pass the checkpoint file (--encoder-checkpoint)")
        if not Path(checkpoint).is_file():
            raise EncoderError(f"encoder checkpoint {str(checkpoint)!r} does not exist")
        if (got := file_digest(str(checkpoint))) != weights:
            raise EncoderError(f"encoder checkpoint {str(checkpoint)!r} has digest {got[:19]}..., the features were "
                               f"made with {weights[:19]}...: pass the checkpoint they were made with")
        ckpt = Path(checkpoint)
    elif seed is None:
        raise EncoderError(f"encoder identity has weights {weights!r}; expected 'random-init:seed=N' or 'sha256:...'")
    try:
        cfg = EncoderConfig(model=identity.model, checkpoint=ckpt, image_size=identity.image_size,
                            tokens=identity.tokens, layer=identity.layer, seed=seed or 0,
                            device=device if identity.runtime == "torch" else "cpu",
                            runtime=identity.runtime, precision=identity.precision)
    except ValueError as e:
        raise EncoderError(f"encoder identity {identity.describe()} is invalid: {str(e).splitlines()[0]}") from None
    if diff := encoder_identity(cfg).differences(identity):
        raise EncoderError(f"encoder {cfg.model!r} rebuilt here differs from the recorded identity in {diff}: "
                           "install the timm version the features were made with")
    return cfg
