"""The encoder's identity, computed from its config without building it (no torch import for
the cheap part): what versions a feature store, and how a recorded identity is turned back
into the config that rebuilds the encoder (evaluation encodes live frames exactly as the
training features were encoded).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.sources.hashing import file_digest
from schemas import EncoderConfig
from schemas.errors import ConfigError
from schemas.identity import EncoderIdentity, random_init_weights


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


def encoder_identity(cfg: EncoderConfig) -> EncoderIdentity:
    """Everything that changes the numbers stored (batch size and device do not), computed
    without building the model: a no-op ingest checks it against the store in milliseconds."""
    import timm

    if not timm.is_model(cfg.model):
        raise EncoderError(f"unknown timm model {cfg.model!r} (see timm.list_models())")
    pretrained = timm.models.get_pretrained_cfg(cfg.model)
    mean = getattr(pretrained, "mean", None) or (0.485, 0.456, 0.406)
    std = getattr(pretrained, "std", None) or (0.229, 0.224, 0.225)
    return EncoderIdentity(model=cfg.model, weights=config_weights(cfg), image_size=cfg.image_size,
                           mean=tuple(float(x) for x in mean), std=tuple(float(x) for x in std),
                           tokens=cfg.tokens, layer=cfg.layer)


def encoder_config_from_identity(identity: EncoderIdentity, checkpoint: Path | None = None, *,
                                 device: str = "auto") -> EncoderConfig:
    """The `EncoderConfig` that rebuilds the encoder an identity (from a store or a model card)
    names, so evaluation encodes live frames exactly as the training features were encoded.

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
                            tokens=identity.tokens, layer=identity.layer, seed=seed or 0, device=device)
    except ValueError as e:
        raise EncoderError(f"encoder identity {identity.describe()} is invalid: {str(e).splitlines()[0]}") from None
    if diff := encoder_identity(cfg).differences(identity):
        raise EncoderError(f"encoder {cfg.model!r} rebuilt here differs from the recorded identity in {diff}: "
                           "install the timm version the features were made with")
    return cfg
