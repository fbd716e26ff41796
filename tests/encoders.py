"""The encoder the tests ingest with: timm's ViT-Tiny at 32 px, random init, mean-pooled, in
torch fp32, so that an encoder actor or a local ingest builds it in a fraction of a second. The
CPU default numerics (`runtime: auto`, OpenVINO bf16) convert and compile a model first; their
agreement with torch fp32 is `tests/test_encoder_runtimes.py`'s, and the demo test and the
multi-node spread test ingest with them."""

from __future__ import annotations

from schemas import EncoderConfig

TINY = EncoderConfig(model="vit_tiny_patch16_224", image_size=32, tokens="mean", batch_size=8, runtime="torch",
                     precision="fp32")
