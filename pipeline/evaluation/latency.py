"""Action-chunk latency of a policy at batch 1: the policy alone, and encoder + policy from a frame.

    from pipeline.evaluation.latency import measure_latency
    figures = measure_latency(runner, FrozenEncoder(cfg), frame)   # {"policy_ms": {"median", "p95"}, ...}

What is timed is what a robot would wait for between observing and acting: (a) features in,
chunk out (`runner.act`); (b) a uint8 frame in, chunk out: the ingest's preprocessing
(`resize_like_decode`), the frozen encoder, the policy. Median and 95th percentile over
`calls` calls after `warmup` untimed ones, on whatever device the runner and encoder live on;
the chunk comes back as a numpy array, so CUDA work is complete when the clock stops. The
torch thread count is recorded: on a shared CPU a second thread often waits for a busy core.
The encoder runs on the runtime and precision its identity names (the policy's store's), and
they are recorded; OpenVINO and ONNX Runtime run on the CPU only, so the CUDA figures are
taken only for a torch encoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from pipeline.decode import resize_like_decode
from pipeline.encode import FrozenEncoder
from schemas import EncoderConfig
from schemas.cards import PolicyCard

__all__ = ["Runner", "latency_report", "measure_latency"]


class Runner(Protocol):
    """What the evaluation and the latency figures need of a policy (model.policy's `PolicyRunner`)."""

    card: PolicyCard  # the policy card: card.encoder is the encoder identity of its features
    horizon: int  # actions per chunk
    action_dim: int
    control_hz: float  # the rate the chunk's actions are meant to be executed at

    def act(self, features: np.ndarray, instruction: str, proprio: np.ndarray) -> np.ndarray: ...


def _ms_stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"median": float(np.median(ms)), "p95": float(np.percentile(ms, 95)), "mean": float(ms.mean())}


def measure_latency(runner: Runner, encoder: FrozenEncoder, frame: np.ndarray, *, calls: int = 200,
                    warmup: int = 20, instruction: str = "", proprio: np.ndarray | None = None,
                    resize: str = "center_crop") -> dict[str, Any]:
    """Milliseconds per action chunk at batch 1, after `warmup` untimed calls, on the devices
    `runner` and `encoder` live on: (a) `policy_ms`, features in, chunk out; (b)
    `encoder_policy_ms`, from a uint8 frame (H, W, 3): preprocessing + encoder + policy."""
    import torch

    if calls < 1 or warmup < 0:
        raise ValueError(f"calls must be >= 1 and warmup >= 0, got calls={calls!r}, warmup={warmup!r}")
    size = encoder.cfg.image_size
    state = np.zeros(4, np.float32) if proprio is None else np.asarray(proprio, np.float32)

    def full() -> np.ndarray:
        features = encoder.encode(resize_like_decode(frame[None], size, resize))[0]
        return runner.act(features, instruction, state)

    features = encoder.encode(resize_like_decode(frame[None], size, resize))[0]
    timings: dict[str, list[float]] = {"policy_ms": [], "encoder_policy_ms": []}
    for name, fn in (("policy_ms", lambda: runner.act(features, instruction, state)), ("encoder_policy_ms", full)):
        for _ in range(warmup):
            fn()
        for _ in range(calls):
            t = time.perf_counter()
            np.asarray(fn())  # the chunk is on the host: CUDA work is finished when it returns
            timings[name].append(time.perf_counter() - t)
    device = getattr(runner, "device", None)
    return {
        "encoder_device": encoder.device.type, "policy_device": str(device) if device is not None else "cpu",
        "encoder_runtime": encoder.identity.runtime, "encoder_precision": encoder.identity.precision,
        "torch_threads": torch.get_num_threads(), "calls": calls, "warmup": warmup,
        "frame": list(frame.shape[:2]), "encoder_input": size, "tokens": list(features.shape),
        "policy_ms": _ms_stats(timings["policy_ms"]), "encoder_policy_ms": _ms_stats(timings["encoder_policy_ms"]),
    }


def latency_report(load_runner: Callable[..., Runner], encoder_cfg: EncoderConfig, frame: np.ndarray, *,
                   calls: int = 200, warmup: int = 20, instruction: str = "", resize: str = "center_crop",
                   threads: int | None = None) -> dict[str, dict[str, Any]]:
    """`measure_latency` on the CPU (`threads` torch threads, default torch's) and, when torch sees
    one, on CUDA (`load_runner(device="cuda")`)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _latency_on_devices(load_runner, encoder_cfg, frame, calls=calls, warmup=warmup,
                                   instruction=instruction, resize=resize)
    finally:
        torch.set_num_threads(before)


def _latency_on_devices(load_runner: Callable[..., Runner], encoder_cfg: EncoderConfig, frame: np.ndarray, *,
                        calls: int, warmup: int, instruction: str, resize: str) -> dict[str, dict[str, Any]]:
    import torch

    out = {"cpu": measure_latency(load_runner(), FrozenEncoder(encoder_cfg.model_copy(update={"device": "cpu"})),
                                  frame, calls=calls, warmup=warmup, instruction=instruction, resize=resize)}
    if torch.cuda.is_available() and encoder_cfg.runtime == "torch":  # OpenVINO / ONNX Runtime run on the CPU
        out["cuda"] = measure_latency(load_runner(device="cuda"),
                                      FrozenEncoder(encoder_cfg.model_copy(update={"device": "cuda"})),
                                      frame, calls=calls, warmup=warmup, instruction=instruction, resize=resize)
        out["cuda"]["gpu"] = torch.cuda.get_device_name()
    return out
