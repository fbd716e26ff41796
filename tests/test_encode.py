"""The frozen encoder: token modes, determinism, and local checkpoints (no network)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline.encode import EncoderError, FrozenEncoder
from schemas import EncoderConfig

# 4x4 patches of 192-d. The reference runtime: token modes and checkpoints are the runtime-free
# part (tests/test_encoder_runtimes.py holds every runtime to torch fp32), and no conversion is paid.
TINY = dict(model="vit_tiny_patch16_224", image_size=64, runtime="torch", precision="fp32")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize(("tokens", "shape"), [("cls", (1, 192)), ("mean", (1, 192)), ("grid:2x2", (4, 192)),
                                                ("patches", (16, 192))])
def test_token_modes_have_the_documented_shapes(frames, tokens, shape):
    enc = FrozenEncoder(EncoderConfig(**TINY, tokens=tokens))
    out = enc.encode(frames)
    assert out.dtype == np.float16 and out.shape == (3, *shape)
    assert enc.token_shape == shape


def test_grid_pools_the_patch_tokens(frames):
    patches = FrozenEncoder(EncoderConfig(**TINY, tokens="patches")).encode(frames).astype(np.float32)
    grid = FrozenEncoder(EncoderConfig(**TINY, tokens="grid:1x1")).encode(frames).astype(np.float32)
    np.testing.assert_allclose(grid[:, 0], patches.mean(1), atol=2e-2)


def test_same_identity_same_features_and_layer_changes_them(frames):
    a = FrozenEncoder(EncoderConfig(**TINY)).encode(frames)
    b = FrozenEncoder(EncoderConfig(**TINY)).encode(frames)
    np.testing.assert_array_equal(a, b)
    mid = FrozenEncoder(EncoderConfig(**TINY, layer=5))
    assert mid.identity.layer == 5 and mid.identity != FrozenEncoder(EncoderConfig(**TINY)).identity
    assert not np.allclose(mid.encode(frames), a)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_checkpoint_is_loaded_and_hashed(tmp_path, frames, suffix):
    import timm  # here, not at collection: every parallel worker collects this module

    torch.manual_seed(123)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=0)
    path = tmp_path / f"w{suffix}"
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    enc = FrozenEncoder(EncoderConfig(**TINY, checkpoint=path))
    assert enc.identity.weights.startswith("sha256:")
    with torch.inference_mode():
        x = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
        want = model.eval().forward_features(x)[:, 1:].mean(1)
    got = FrozenEncoder(EncoderConfig(**TINY, checkpoint=path, tokens="mean")).encode(frames)[:, 0]
    np.testing.assert_allclose(got.astype(np.float32), want.numpy(), atol=2e-2)
    assert enc.identity != FrozenEncoder(EncoderConfig(**TINY)).identity


def test_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"something.weight": torch.zeros(2)}, str(path))
    with pytest.raises(EncoderError, match="does not fit"):
        FrozenEncoder(EncoderConfig(**TINY, checkpoint=path))
    with pytest.raises(EncoderError, match="does not exist"):
        FrozenEncoder(EncoderConfig(**TINY, checkpoint=tmp_path / "nope.safetensors"))
