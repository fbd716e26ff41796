"""The latent world model's promises (model/lawm.py), on tiny models and synthetic features.

The synthetic pairs hide a 2-d "action": f_{t+k} = f_t + a displacement linear in the
action, so a model that learned anything must have put the action into z.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from model.lawm import LaWM
from schemas.training import LamModelConfig

T, D, S = 16, 32, 3  # tokens, feature dim, state dim
PAIRS = 64


def tiny(**kw: object) -> LamModelConfig:
    return LamModelConfig(**{"width": 32, "heads": 2, "idm_layers": 1, "fdm_layers": 1, "code_dim": 4, **kw})


def build(cfg: LamModelConfig, state_dim: int = 0, seed: int = 0) -> LaWM:
    torch.manual_seed(seed)
    return LaWM(cfg, tokens=T, feature_dim=D, state_dim=state_dim)


def features(b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pairs in float16, as the store holds them; no hidden action (for shape checks)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, T, D, generator=g) * 3 + 1).half(), (torch.randn(b, T, D, generator=g) * 3 + 1).half()


@pytest.fixture(scope="module")
def action_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """64 float16 pairs with f_tk = f_t + (A @ action) reshaped to (T, D), action ~ U(-1, 1)^2."""
    g = torch.Generator().manual_seed(0)
    f_t = torch.randn(PAIRS, T, D, generator=g) * 2 + 0.5
    action = torch.rand(PAIRS, 2, generator=g) * 2 - 1
    A = torch.randn(T * D, 2, generator=g)
    f_tk = f_t + (action @ A.T).reshape(PAIRS, T, D)
    return f_t.half(), f_tk.half()


@contextmanager
def one_thread() -> Iterator[None]:
    """Intra-op threads only for this block, restored after.

    These matrices are too small to gain from threads, and on a busy 2-core machine the
    oversubscription made the training fixture 6x slower (53 s instead of 9 s).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(action_pairs) -> LaWM:
    """A vae LaWM overfitted on the 64 action pairs (200 full-batch AdamW steps)."""
    f_t, f_tk = action_pairs
    model = build(LamModelConfig(width=64, heads=4, idm_layers=1, fdm_layers=1, code_dim=8))
    both = torch.cat([f_t, f_tk]).float().reshape(-1, D)
    model.set_feature_stats(both.mean(0).numpy(), both.std(0).numpy())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    with one_thread():
        for _ in range(200):
            out = model(f_t, f_tk)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
    return model.eval()


@pytest.mark.parametrize("bottleneck", ["vae", "vq"])
@pytest.mark.parametrize("state_dim", [0, S])
def test_shapes(bottleneck, state_dim):
    """encode/decode/forward give the documented shapes, with and without state."""
    cfg = tiny(bottleneck=bottleneck, queries=2)
    model = build(cfg, state_dim)
    f_t, f_tk = features(5)
    Z = model.latent_dim
    assert Z == 8
    lat = model.encode(f_t, f_tk)
    assert lat.z.shape == lat.mu.shape == (5, Z) and lat.reg.shape == ()
    assert (lat.codes.shape == (5, 2) and lat.codes.dtype == torch.int64) if bottleneck == "vq" else lat.codes is None
    assert model.decode(f_t, lat.z).shape == (5, T, D)
    assert model.decode(f_t, lat.z).dtype == torch.float32
    state = dict(state_delta=torch.randn(5, S), state_mask=torch.ones(5, dtype=torch.bool)) if state_dim else {}
    out = model(f_t, f_tk, **state)
    assert out.z.shape == (5, Z) and out.pred.shape == (5, T, D) and out.loss.shape == ()
    expected = {"forward", "copy", "kl" if bottleneck == "vae" else "vq"}
    expected |= {"aux"} if state_dim else set()
    expected |= {"perplexity", "usage"} if bottleneck == "vq" else set()
    assert set(out.parts) == expected
    assert all(not v.requires_grad and v.shape == () for v in out.parts.values())
    assert model.latent(f_t, f_tk).shape == (5, Z)


def test_starts_as_copy_of_f_t():
    """An untrained model predicts exactly f_t: the residual starts from the copy baseline."""
    model = build(tiny()).eval()
    f_t, f_tk = features(4)
    out = model(f_t, f_tk)
    torch.testing.assert_close(out.pred, model.standardize(f_t))
    torch.testing.assert_close(out.parts["forward"], out.parts["copy"])


def test_same_seed_same_model():
    """Two models built after the same torch.manual_seed are identical."""
    a, b = build(tiny(bottleneck="vq"), S).state_dict(), build(tiny(bottleneck="vq"), S).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_overfits_action_pairs(trained, action_pairs):
    """After training, forward error on the training pairs is < 0.1x the copy-f_t error."""
    with torch.no_grad():
        out = trained(*action_pairs)
    assert out.parts["forward"] < 0.1 * out.parts["copy"], out.parts


def test_z_carries_the_action(trained, action_pairs):
    """Decoding with z = 0 is much worse than with the inferred z: the change lives in z."""
    f_t, f_tk = action_pairs
    z = trained.latent(f_t, f_tk)
    target = trained.standardize(f_tk)
    with torch.no_grad():
        err_z = F.mse_loss(trained.decode(f_t, z), target)
        err_0 = F.mse_loss(trained.decode(f_t, torch.zeros_like(z)), target)
    assert err_0 > 2 * err_z, (err_0, err_z)


@pytest.mark.parametrize("bottleneck", ["vae", "vq"])
def test_latent_is_deterministic_and_keeps_mode(bottleneck):
    """latent() gives the same z twice (no sampling, no input noise) and leaves train/eval mode as found."""
    model = build(tiny(bottleneck=bottleneck, idm_noise=0.5, dropout=0.1))
    f_t, f_tk = features(6)
    model.train()
    a, b = model.latent(f_t, f_tk), model.latent(f_t, f_tk)
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert model.training
    model.eval()
    model.latent(f_t, f_tk)
    assert not model.training
    if bottleneck == "vq":
        assert int(model.vq_step) == 0  # labelling never counts as a training forward


def test_vq_dead_code_restart_revives_codes():
    """With every input on one code, a restart re-seeds the unused codes from the batch and they get used."""
    model = build(tiny(bottleneck="vq", vq_codes=8, vq_restart_every=1, queries=2)).train()
    with torch.no_grad():
        model.codebook.zero_()
        model.codebook[1:] += 100.0  # far from every encoder output: only code 0 is ever chosen
    before = model.codebook.detach().clone()
    f_t, f_tk = features(8)
    first = model(f_t, f_tk)
    assert first.parts["usage"] == pytest.approx(1 / 8) and first.parts["perplexity"] == pytest.approx(1.0)
    assert model.code_usage.tolist() == [16.0] + [0.0] * 7

    second = model(f_t, f_tk)  # restart due: codes 1..7 were unused since the last one
    assert torch.equal(model.codebook[0], before[0])
    assert not torch.isclose(model.codebook[1:], before[1:]).all(dim=1).any()
    assert second.parts["usage"] > 1 / 8 and second.parts["perplexity"] > 1.0


@pytest.mark.parametrize("bottleneck", ["vae", "vq"])
@pytest.mark.parametrize("state_dim", [0, S])
def test_every_parameter_gets_a_gradient(bottleneck, state_dim):
    """One forward/backward reaches every parameter, so DDP needs no find_unused_parameters."""
    model = build(tiny(bottleneck=bottleneck), state_dim).train()
    f_t, f_tk = features(4)
    mask = torch.tensor([True, False, True, False])
    state = dict(state_delta=torch.randn(4, S), state_mask=mask) if state_dim else {}
    model(f_t, f_tk, **state).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_aux_masked_rows_contribute_nothing():
    """With state_mask all False (human video, NaN state), the aux term is 0 and the aux head gets zero gradient."""
    model = build(tiny(), S).train()
    f_t, f_tk = features(4)
    out = model(f_t, f_tk, state_delta=torch.full((4, S), float("nan")), state_mask=torch.zeros(4, dtype=torch.bool))
    assert out.parts["aux"] == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.count_nonzero(model.aux_head.weight.grad) == 0
    assert torch.count_nonzero(model.aux_head.bias.grad) == 0

    model.zero_grad()
    out = model(f_t, f_tk, state_delta=torch.randn(4, S), state_mask=torch.tensor([True, False, False, False]))
    out.loss.backward()
    assert out.parts["aux"] > 0 and torch.count_nonzero(model.aux_head.bias.grad) > 0


@pytest.mark.parametrize("bottleneck", ["vae", "vq"])
def test_bf16_autocast(bottleneck):
    """Under bf16 autocast, the loss is finite float32 and backward works."""
    model = build(tiny(bottleneck=bottleneck), S).train()
    f_t, f_tk = features(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(f_t, f_tk, state_delta=torch.randn(4, S), state_mask=torch.ones(4, dtype=torch.bool))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert out.pred.dtype == torch.float32
    out.loss.backward()


@pytest.mark.parametrize("bottleneck", ["vae", "vq"])
def test_state_dict_round_trips_through_safetensors(tmp_path, bottleneck):
    """A checkpoint saved with safetensors reloads into a fresh LaWM with the same latents and statistics."""
    cfg = tiny(bottleneck=bottleneck, queries=2)
    model = build(cfg, S, seed=0)
    model.set_feature_stats(torch.linspace(-1, 1, D), torch.linspace(0, 2, D))  # includes a std below the floor
    model.set_state_stats(torch.tensor([0.1, 0.2, 0.3]))
    f_t, f_tk = features(6)
    model.train()
    model(f_t, f_tk)  # moves the vq usage counters off their initial values
    save_file(model.state_dict(), tmp_path / "lawm.safetensors")

    fresh = build(cfg, S, seed=1)
    fresh.load_state_dict(load_file(tmp_path / "lawm.safetensors"))
    assert fresh.feat_std.min() == pytest.approx(1e-3)
    for name, buf in model.named_buffers():
        assert torch.equal(buf, dict(fresh.named_buffers())[name]), name
    assert torch.equal(model.latent(f_t, f_tk), fresh.latent(f_t, f_tk))


# --- levers that make z carry the action (issue 15) ------------------------------------------------

A, H = 2, 3  # action dim, chunk length
VOCAB = ["<unk>", "open", "push", "the"]


def every_option(**kw: object) -> LamModelConfig:
    return tiny(idm_frames=3, action_weight=1.0, fdm_instruction=True, idm_token_drop=0.25, fdm_token_drop=0.25,
                **kw)


def build_full(cfg: LamModelConfig, seed: int = 0) -> LaWM:
    torch.manual_seed(seed)
    return LaWM(cfg, tokens=T, feature_dim=D, state_dim=S, action_dim=A, horizon=H, vocab=VOCAB)


def full_batch(b: int = 4) -> dict:
    f_t, f_tk = features(b)
    mask = torch.ones(b, H, dtype=torch.bool)
    return dict(f_t=f_t, f_tk=f_tk, state_delta=torch.randn(b, S), state_mask=torch.ones(b, dtype=torch.bool),
                f_mid=f_t[:, None].clone(), actions=torch.randn(b, H, A), action_mask=mask,
                instruction=["open the door", "push", None, "fold the towel"][:b])


@pytest.mark.parametrize("bottleneck", ["vae", "vq"])
def test_every_option_on_still_reaches_every_parameter(bottleneck):
    """Multi-frame IDM, action head, instruction-conditioned FDM, token drop: one backward
    reaches every parameter (DDP needs no find_unused_parameters) and the parts are logged."""
    model = build_full(every_option(bottleneck=bottleneck)).train()
    batch = full_batch()
    f_t, f_tk = batch.pop("f_t"), batch.pop("f_tk")
    out = model(f_t, f_tk, **batch)
    assert {"action", "aux", "forward"} <= set(out.parts)
    out.loss.backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def test_action_head_learns_only_from_rows_that_keep_actions():
    """Human video and robot episodes without actions (mask False) give the action head no gradient."""
    model = build_full(every_option()).train()
    batch = full_batch()
    f_t, f_tk = batch.pop("f_t"), batch.pop("f_tk")
    batch["actions"] = torch.full((4, H, A), float("nan"))  # what a masked-out row may hold
    batch["action_mask"] = torch.zeros(4, H, dtype=torch.bool)
    out = model(f_t, f_tk, **batch)
    assert out.parts["action"] == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.count_nonzero(model.action_head.weight.grad) == 0


def test_multi_frame_idm_reads_the_frames_between():
    """An IDM of 3 frames refuses a pair without the middle frame, and the middle frame changes z."""
    model = build_full(every_option()).eval()
    f_t, f_tk = features(4)
    with pytest.raises(ValueError, match="f_mid"):
        model.encode(f_t, f_tk)
    z1 = model.latent(f_t, f_tk, f_t[:, None])
    z2 = model.latent(f_t, f_tk, f_tk[:, None])
    assert not torch.allclose(z1, z2)


def test_instruction_conditioned_fdm_needs_and_uses_the_instruction():
    """The conditioned FDM refuses a batch without instructions, and (once its zero-initialised
    AdaLN and output layers have moved) predicts differently for another instruction."""
    model = build_full(every_option())
    f_t, _ = features(2)
    z = torch.randn(2, model.latent_dim)
    with pytest.raises(ValueError, match="instruction"):
        model.decode(f_t, z)
    with torch.no_grad():
        for layer in [*(block.mod for block in model.fdm_blocks), model.fdm_final_mod, model.fdm_out]:
            layer.weight.normal_()
    model.eval()
    a = model.decode(f_t, z, ["open the door", "open the door"])
    b = model.decode(f_t, z, ["push", "push"])
    assert not torch.allclose(a, b)


def test_token_drop_zeroes_whole_tokens_in_training_only():
    model = build_full(tiny(idm_noise=0.0, idm_token_drop=0.5)).train()
    x = torch.ones(8, T, D)
    dropped = model._augment(x, 0.0, 0.5)
    per_token = dropped.sum(-1)  # (8, T): 0 or D
    assert set(per_token.unique().tolist()) == {0.0, float(D)}
    assert torch.equal(model.eval()._augment(x, 0.3, 0.5), x)
