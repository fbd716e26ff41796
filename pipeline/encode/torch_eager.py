"""torch eager runtime of the encoder: the reference (`fp32`), or bf16 autocast.

fp32 on the CPU is the numerics every store written before runtimes were named holds, bit
for bit. bf16 autocast runs the matrix products in bfloat16 (about 2x on a CPU with AVX-512
BF16, the GPU default) and keeps the normalisation and the token pooling in fp32.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.encode.tokens import TokenNet


class TorchRuntime:
    name = "torch"

    def __init__(self, net: TokenNet, device: torch.device, precision: str):
        self.net, self.device, self.precision = net.to(device), device, precision

    def set_threads(self, n: int) -> None:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(frames).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.net(x)
        return out.to(torch.float16).cpu().numpy()
