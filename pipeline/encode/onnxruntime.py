"""ONNX Runtime runtime of the encoder: fp32, an optional extra (`pip install 'lawam[onnx]'`).

The whole `TokenNet` is exported to ONNX on the worker (torch's TorchScript exporter, which
needs the `onnx` package), kept on disk like OpenVINO's IR (`pipeline.encode.converted`),
and run by ONNX Runtime's CPU provider. Measured here it is faster than torch fp32 but
slower than OpenVINO in either precision (benchmarks/bench_encoder.py), so it is never the
default; it stays for machines where it measures faster. Threads are fixed per session, so
a session is made per thread count asked for, lazily, and kept.
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

INSTALL = "pip install 'onnxruntime==1.32.0' 'onnx==1.23.2'"


def _onnxruntime():
    try:
        import onnx  # noqa: F401 - torch's exporter needs it
        import onnxruntime
    except ImportError:
        raise EncoderError(f"encoder.runtime 'onnxruntime' needs the onnxruntime and onnx packages: {INSTALL} "
                           "(or pip install 'lawam[onnx]')") from None
    return onnxruntime


def load_or_export(net: TokenNet, identity: EncoderIdentity) -> str:
    """The path of `identity`'s encoder as ONNX, exported and cached when absent."""
    entry = converted_path(identity, "onnx")
    path = entry / "model.onnx"
    if path.is_file():
        return str(path)
    t = time.perf_counter()
    tmp = staging(entry)
    size = identity.image_size
    example = torch.zeros((1, size, size, 3), dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # static sizes but the batch, as for OpenVINO
        torch.onnx.export(net.eval(), (example,), str(tmp / "model.onnx"), opset_version=17, dynamo=False,
                          input_names=["frames"], output_names=["tokens"], dynamic_axes={"frames": {0: "batch"}})
    publish(tmp, entry)
    log.info("exported %s to ONNX in %.1f s (kept in %s)", identity.model, time.perf_counter() - t, entry)
    return str(path)


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, net: TokenNet, identity: EncoderIdentity):
        self._ort = _onnxruntime()
        if identity.precision != "fp32":
            raise EncoderError(f"encoder.precision {identity.precision!r}: onnxruntime computes fp32 only")
        self.precision = "fp32"
        self.path = load_or_export(net, identity)
        self._sessions: dict[int, object] = {}
        self._threads = max(1, torch.get_num_threads())
        self._session(self._threads)

    def _session(self, threads: int):
        if threads not in self._sessions:
            so = self._ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
            self._sessions[threads] = self._ort.InferenceSession(self.path, so, providers=["CPUExecutionProvider"])
        return self._sessions[threads]

    def set_threads(self, n: int) -> None:
        self._threads = n

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = self._session(self._threads).run(None, {"frames": frames})[0]  # (B, T, D) float32
        return out.astype(np.float16)
