"""CUDA check of stage 1: the bf16 training loop, the IDM labeler and the frozen encoder on a GPU,
each beside the same work on the CPU of the same machine.

  train      `train_lam(device="cuda")` (bf16 autocast) on a synthetic store: runs, loss falls,
             card says cuda; pairs/s beside `device="cpu"` for a few steps
  labeler    `IdmLabeler(device="cuda")` vs `device="cpu"` on the same pairs: max |dz|, pairs/s
  encoder    `FrozenEncoder` on CUDA (bf16) vs CPU (fp32), same identity: cosine of the features,
             frames/s

Prints and writes JSON (default benchmarks/results/gpu_stage1.json). Needs a CUDA device; no Ray.
Usage: python -m benchmarks.gpu_stage1 [--steps 300] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.labeler import IdmLabeler
from model.train_lam import train_lam
from pipeline.encode import FrozenEncoder
from pipeline.store import FeatureStore
from schemas import EncoderConfig
from schemas.training import LamConfig
from tests.stores import SynthSource, write_store


def timed(fn, n: int) -> float:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", default="benchmarks/results/gpu_stage1.json")
    args = p.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    res: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    work = Path(tempfile.mkdtemp())
    uri = str(work / "store")
    write_store(uri, [SynthSource("bot", episodes=60, seconds=6.0), SynthSource("cam", kind="human", fps=10.0,
                                                                                 episodes=20, seconds=4.0)])
    cfg = LamConfig.model_validate({"optim": {"steps": args.steps, "eval_every": 0, "checkpoint_every": 0},
                                    "pairs": {"heldout_fraction": 0.2}})
    card = train_lam(uri, work / "lam", cfg, device="cuda", progress=False)
    rows = [json.loads(x) for x in (work / "lam" / "metrics.jsonl").read_text().splitlines()]
    ratio = [r["forward"] / r["copy"] for r in rows if "forward" in r]
    cpu = train_lam(uri, work / "lam-cpu", cfg, device="cpu", steps=20, progress=False)
    res["train"] = {"device": card.device, "steps": card.steps, "pairs_per_s_cuda": card.pairs_per_s,
                    "pairs_per_s_cpu": cpu.pairs_per_s, "forward_over_copy_first": ratio[0],
                    "forward_over_copy_last": ratio[-1],
                    "heldout_forward_over_copy": card.metrics["forward_over_copy"]}
    print("train", res["train"])

    store = FeatureStore.open(uri)
    f = np.concatenate([store.features(i) for i in range(len(store))])
    a, b = f[:-2], f[2:]
    gpu_fn, cpu_fn = IdmLabeler(str(work / "lam"), device="cuda")(), IdmLabeler(str(work / "lam"), device="cpu")()
    zg, zc = gpu_fn(a, b)[0], cpu_fn(a, b)[0]
    t = time.perf_counter()
    for s in range(0, len(a), 4096):
        gpu_fn(a[s : s + 4096], b[s : s + 4096])
    res["labeler"] = {"pairs": len(a), "max_abs_dz": float(np.abs(zg - zc).max()), "z_scale": float(np.abs(zc).mean()),
                      "pairs_per_s_cuda": len(a) / (time.perf_counter() - t)}
    print("labeler", res["labeler"])

    enc_cfg = EncoderConfig(device="cuda", batch_size=64, runtime="torch", precision="bf16")
    frames = np.random.default_rng(0).integers(0, 255, (64, enc_cfg.image_size, enc_cfg.image_size, 3), np.uint8)
    # torch bf16 on CUDA (the GPU default) against the fp32 reference on the CPU
    eg, ec = FrozenEncoder(enc_cfg), FrozenEncoder(enc_cfg.model_copy(update={"device": "cpu", "precision": "fp32"}))
    assert eg.identity.differences(ec.identity) == ["precision"]
    xg, xc = eg.encode(frames).astype(np.float32), ec.encode(frames).astype(np.float32)
    cos = (xg * xc).sum(-1) / (np.linalg.norm(xg, axis=-1) * np.linalg.norm(xc, axis=-1))
    res["encoder"] = {"model": enc_cfg.model, "image_size": enc_cfg.image_size, "tokens": enc_cfg.tokens,
                      "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                      "max_abs_diff": float(np.abs(xg - xc).max()),
                      "frames_per_s_cuda": 64 / timed(lambda: eg.encode(frames), 10)}
    print("encoder", res["encoder"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
