"""The frozen encoder stage: frames in, float16 feature tokens out, on a named runtime.

- `identity`     — what versions a feature store (`encoder_identity`), how `runtime: auto`
                   resolves (`resolve_numerics`), and the config that rebuilds the encoder a
                   recorded identity names; torch-free but for timm's registry.
- `frozen`       — `FrozenEncoder`: built on the worker that uses it; dispatches to one of
- `torch_eager`, `openvino`, `onnxruntime` — one module per runtime, imported when named;
- `tokens`       — `TokenNet`: preprocessing, backbone and token selection as one module;
- `converted`    — converted models kept on disk.

Names load on first use (PEP 562): a no-op ingest checks the identity without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CPU_RUNTIME": "identity",
    "EncoderError": "identity",
    "config_weights": "identity",
    "encoder_config_from_identity": "identity",
    "encoder_identity": "identity",
    "resolve_numerics": "identity",
    "FrozenEncoder": "frozen",
    "TokenSpec": "tokens",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from pipeline.encode.frozen import FrozenEncoder  # noqa: F401
    from pipeline.encode.identity import (  # noqa: F401
        CPU_RUNTIME,
        EncoderError,
        config_weights,
        encoder_config_from_identity,
        encoder_identity,
        resolve_numerics,
    )
    from pipeline.encode.tokens import TokenSpec  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
