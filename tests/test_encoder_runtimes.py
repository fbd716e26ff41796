"""Encoder runtimes and precisions: each within a stated tolerance of torch fp32, named in the
store's identity, never mixed in one store, and a store written before they were named keeps
working with what it was written with."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import zarr

from pipeline.encode import EncoderError, FrozenEncoder, encoder_config_from_identity, resolve_numerics
from pipeline.ingest import ingest_episodes
from pipeline.ingest.frames import decode_episode_blocks
from pipeline.sources import iter_episodes
from pipeline.store import FeatureStore, StoreMismatchError
from pipeline.store.backend import open_repo
from schemas import EncoderConfig, SamplingConfig, SourceSpec, StoreConfig
from schemas.cards import LawmCard
from schemas.identity import EncoderIdentity, SamplingParams
from tests.datasets import make_video

TINY = EncoderConfig(model="vit_tiny_patch16_224", image_size=32, tokens="grid:2x2", batch_size=8, device="cpu")
REFERENCE = TINY.model_copy(update={"runtime": "torch", "precision": "fp32"})

# The tolerance each runtime is held to against torch fp32 (features are float16, LayerNorm
# outputs of magnitude up to ~5): per frame cosine of all tokens, and max |difference|.
TOLERANCE = {"fp32": (0.99999, 0.01), "bf16": (0.9999, 0.1)}


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(frames) -> np.ndarray:
    return FrozenEncoder(REFERENCE).encode(frames)


def test_torch_fp32_is_bit_equal_to_the_encoder_before_runtimes(frames, reference):
    """Stores written before runtimes were named keep growing with equal bits: torch fp32
    computes exactly what timm's forward_features, normalised and pooled, gave then."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32).eval()
    with torch.inference_mode():
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)
        x = (x - torch.tensor([0.5] * 3).view(1, 3, 1, 1)) / torch.tensor([0.5] * 3).view(1, 3, 1, 1)
        grid = model.forward_features(x)[:, 1:].reshape(6, 2, 2, 192).float()
        want = torch.nn.functional.adaptive_avg_pool2d(grid.permute(0, 3, 1, 2), (2, 2)).flatten(2).transpose(1, 2)
    np.testing.assert_array_equal(reference, want.to(torch.float16).numpy())


@pytest.mark.parametrize(("runtime", "precision"), [("torch", "bf16"), ("openvino", "bf16"), ("openvino", "fp32"),
                                                    ("onnxruntime", "fp32")])
def test_every_runtime_is_within_tolerance_of_torch_fp32(frames, reference, runtime, precision):
    enc = FrozenEncoder(TINY.model_copy(update={"runtime": runtime, "precision": precision}))
    assert (enc.identity.runtime, enc.identity.precision) == (runtime, precision)
    got = enc.encode(frames)
    assert got.dtype == np.float16 and got.shape == reference.shape == (6, 4, 192)
    a, b = got.astype(np.float32).reshape(6, -1), reference.astype(np.float32).reshape(6, -1)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    min_cos, max_abs = TOLERANCE[precision]
    assert cosine.min() >= min_cos and np.abs(a - b).max() <= max_abs, (cosine.min(), np.abs(a - b).max())
    enc.set_threads(1)  # the ingest's ThreadTuner switches thread counts between calls
    np.testing.assert_array_equal(enc.encode(frames[:1]), enc.encode(frames[:1]))


def test_a_missing_runtime_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(EncoderError, match=r"pip install 'onnxruntime==[\d.]+' 'onnx==[\d.]+'"):
        FrozenEncoder(TINY.model_copy(update={"runtime": "onnxruntime"}))


def test_auto_follows_the_store_and_picks_the_fastest_for_a_new_one():
    stored = EncoderIdentity.from_dict({"model": "m", "weights": "random-init:seed=0", "image_size": 32,
                                        "mean": [0.5] * 3, "std": [0.5] * 3, "tokens": "mean", "layer": -1})
    assert (stored.runtime, stored.precision) == ("torch", "fp32")  # written before runtimes were named
    no_cuda, cuda = (lambda: False), (lambda: True)
    kept = resolve_numerics(EncoderConfig(), stored=stored, cuda=no_cuda)
    assert (kept.runtime, kept.precision) == ("torch", "fp32")
    new = resolve_numerics(EncoderConfig(), cuda=no_cuda)
    assert new.runtime == "openvino" and new.device == "cpu"
    on_gpu = resolve_numerics(EncoderConfig(), cuda=cuda)
    assert (on_gpu.runtime, on_gpu.precision) == ("torch", "bf16")
    assert resolve_numerics(EncoderConfig(runtime="onnxruntime"), cuda=no_cuda).precision == "fp32"
    with pytest.raises(ValueError, match="runs on the CPU"):
        EncoderConfig(runtime="openvino", device="cuda")


def test_cards_written_before_runtimes_were_named_still_open():
    old = {"model": "m", "weights": "random-init:seed=0", "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
           "tokens": "mean", "layer": -1}
    card = LawmCard.model_validate({
        "lawam_version": "0", "created_at": "x", "store": {"uri": "s", "version": "v"}, "encoder": old,
        "token_shape": [1, 4], "config": {}, "steps": 1, "wall_time_s": 1.0, "metrics": {}, "weights_sha256": "0",
        "latent_dim": 2, "k_seconds": 0.2, "feature_mean": [0.0], "feature_std": [1.0], "label_set": "lam-0"})
    assert card.encoder == EncoderIdentity.from_dict(old) and card.encoder.numerics == "torch fp32"
    rebuilt = encoder_config_from_identity(EncoderIdentity.from_dict({**old, "model": "vit_tiny_patch16_224",
                                                                      "mean": [0.5] * 3}))
    assert (rebuilt.runtime, rebuilt.precision) == ("torch", "fp32")  # eval encodes as the store was written


def _strip_numerics(uri: str) -> None:
    """Make the store's root `encoder` attribute what lawam wrote before runtimes were named."""
    session = open_repo(uri, create=False).writable_session("main")
    root = zarr.open_group(session.store, mode="a")
    root.attrs["encoder"] = {k: v for k, v in root.attrs["encoder"].items() if k not in ("runtime", "precision")}
    session.commit("as written before runtimes were named")


def test_an_old_store_keeps_its_numerics_and_refuses_others(tmp_path):
    videos = tmp_path / "videos"
    for i in range(2):
        make_video(videos / f"v{i}.mp4", n_frames=10, fps=10, seed=i)
    spec = SourceSpec(id="vids", kind="human", format="video_dir", uri=str(videos))
    store = StoreConfig(uri=str(tmp_path / "store"))

    def ingest(cfg: EncoderConfig):
        return ingest_episodes(list(iter_episodes(spec)), encoder=cfg, sampling=SamplingConfig(fps=5), store=store,
                               progress=False, executor="local")  # the Ray path builds the same FrozenEncoder

    ingest(REFERENCE)
    _strip_numerics(store.uri)
    assert FeatureStore.open(store.uri).encoder.numerics == "torch fp32"
    make_video(videos / "v2.mp4", n_frames=10, fps=10, seed=2)
    with pytest.raises(StoreMismatchError) as refused:  # other numerics: refused, one line naming the fix
        ingest(TINY.model_copy(update={"runtime": "openvino"}))
    message = str(refused.value)
    assert "\n" not in message and "torch fp32" in message and "runtime: torch, precision: fp32" in message
    report = ingest(TINY)  # the default, runtime auto: the store's own torch fp32
    assert report.added == 1
    after = FeatureStore.open(store.uri)
    assert after.encoder.numerics == "torch fp32" and len(after) == 3
    ref = next(r for r in iter_episodes(spec) if r.episode_id == "v2.mp4")
    frames = np.concatenate([b["frames"] for b in decode_episode_blocks(ref, SamplingParams(fps=5, size=32),
                                                                         block_frames=8)])
    np.testing.assert_allclose(after.episode("vids/v2.mp4").features.astype(np.float32),
                               FrozenEncoder(REFERENCE).encode(frames).astype(np.float32), atol=2e-3)
