"""The frozen encoder stage: frames in, float16 feature tokens out.

- `identity` — what versions a feature store (`encoder_identity`), and the config that
               rebuilds the encoder a recorded identity names; torch-free but for timm's registry.
- `frozen`   — `FrozenEncoder`: the timm model, built on the worker that uses it.

Names load on first use (PEP 562): a no-op ingest checks the identity without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "EncoderError": "identity",
    "config_weights": "identity",
    "encoder_config_from_identity": "identity",
    "encoder_identity": "identity",
    "FrozenEncoder": "frozen",
    "TokenSpec": "frozen",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from pipeline.encode.frozen import FrozenEncoder, TokenSpec  # noqa: F401
    from pipeline.encode.identity import (  # noqa: F401
        EncoderError,
        config_weights,
        encoder_config_from_identity,
        encoder_identity,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
