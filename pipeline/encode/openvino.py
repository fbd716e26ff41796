"""OpenVINO runtime of the encoder: the CPU default (`runtime: auto`).

The whole `TokenNet` (uint8 frames in, tokens out) is traced once with torch and converted
to OpenVINO's IR on the worker that uses it; the IR is kept on disk
(`pipeline.encode.converted`), so the next actor, process or run only compiles it (about a
second). Inference precision is the identity's: `bf16` (OpenVINO's default on a CPU with
AVX-512 BF16 or AMX; ~3x torch fp32 at 224 px on this project's machines) or `fp32`. The
precision the compiled model really uses is read back and must be the one named: a CPU
without bf16 refuses a bf16 store instead of writing fp32 numbers under its name.

Threads are fixed when a model is compiled, so a model is compiled per thread count asked
for (`set_threads`, driven by the ingest's `ThreadTuner`), lazily, and kept.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import torch

from pipeline.encode.converted import converted_path, publish, staging
from pipeline.encode.identity import EncoderError
from pipeline.encode.tokens import TokenNet
from schemas.identity import EncoderIdentity

log = logging.getLogger(__name__)

INSTALL = "pip install 'openvino==2026.4.1'"
_HINTS = {"bf16": "bf16", "fp32": "f32"}  # INFERENCE_PRECISION_HINT spellings


def _openvino():
    try:
        import openvino
    except ImportError:
        raise EncoderError(f"encoder.runtime 'openvino' needs the openvino package: {INSTALL} "
                           "(or set encoder.runtime: torch)") from None
    return openvino


def convert(net: TokenNet, image_size: int):
    """The OpenVINO model of `net`, batch size dynamic: traced (uint8 NHWC input), converted."""
    ov = _openvino()
    example = torch.zeros((1, image_size, image_size, 3), dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        # shapes read in Python (timm's size checks, the patch grid) are constants: sizes are static but the batch
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(net.eval(), example, check_trace=False)
    return ov.convert_model(traced, example_input=example, input=[([-1, image_size, image_size, 3], ov.Type.u8)])


def load_or_convert(net: TokenNet, identity: EncoderIdentity):
    """The IR of `identity`'s encoder from the cache, converted and cached when absent or unreadable."""
    ov = _openvino()
    entry = converted_path(identity, "openvino")
    xml = entry / "model.xml"
    if xml.is_file():
        try:
            return ov.Core().read_model(str(xml))
        except RuntimeError as e:  # a damaged entry: convert again below
            log.warning("cached OpenVINO model %s does not load (%s): converting again", entry, e)
    t = time.perf_counter()
    model = convert(net, identity.image_size)
    tmp = staging(entry)
    ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)  # fp16 weights would change the numbers
    publish(tmp, entry)
    log.info("converted %s to OpenVINO in %.1f s (kept in %s)", identity.model, time.perf_counter() - t, entry)
    return model


class OpenVinoRuntime:
    name = "openvino"

    def __init__(self, net: TokenNet, identity: EncoderIdentity):
        self._ov = ov = _openvino()
        self.precision = identity.precision
        if self.precision not in _HINTS:
            raise EncoderError(f"encoder.precision {self.precision!r}: OpenVINO computes bf16 or fp32")
        self.core, self.model = ov.Core(), load_or_convert(net, identity)
        self._compiled: dict[int, object] = {}
        self._threads = max(1, torch.get_num_threads())
        self._compile(self._threads)  # now, so a CPU without bf16 is refused at start-up

    def _compile(self, threads: int):
        if threads not in self._compiled:
            cm = self.core.compile_model(self.model, "CPU", {
                "INFERENCE_PRECISION_HINT": _HINTS[self.precision], "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY"})
            got = cm.get_property("INFERENCE_PRECISION_HINT")
            if got != getattr(self._ov.Type, _HINTS[self.precision]):
                raise EncoderError(f"OpenVINO computes {got} on this CPU, not {self.precision}: this CPU has no "
                                   f"native {self.precision}; set encoder.precision: fp32 (a new store), or run on "
                                   "a CPU with AVX-512 BF16 / AMX")
            self._compiled[threads] = cm
        return self._compiled[threads]

    def set_threads(self, n: int) -> None:
        self._threads = n

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = self._compile(self._threads)(frames)[0]  # (B, T, D) float32
        return np.asarray(out, dtype=np.float32).astype(np.float16)
