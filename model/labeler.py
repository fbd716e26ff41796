"""A trained LaWM as a labeler for `pipeline.label.label_store`.

Built on the driver from the checkpoint's card, with the weights loaded once there too (a
few MB): a damaged card or weights file fails on the driver in one line naming the file,
before any actor starts (an actor's failing constructor reaches the driver as Ray's
ActorDiedError, its cause lost). Every worker loads the weights again when it calls it.
The label set is keyed by the sha256 of `model.safetensors`, so two checkpoints never share
a set, and retraining gives a new set beside the old one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import WEIGHTS, file_sha256, read_card
from model.train_lam import load_lawm
from pipeline.store.labels import label_set_id


@dataclass(frozen=True)
class IdmLabeler:
    lam_dir: str
    device: str = "auto"  # auto = CUDA when present (bf16 autocast), else CPU
    set_id: str = field(init=False)
    attrs: dict[str, Any] = field(init=False)
    k_seconds: float = field(init=False)
    encoder: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        lam_dir = str(Path(self.lam_dir).resolve())
        card = read_card(lam_dir, "lawm")
        load_lawm(lam_dir)  # damaged or foreign weights: CheckpointError here, not in an actor
        sha = file_sha256(Path(lam_dir) / WEIGHTS)  # the weights as they are now, not as the card says
        object.__setattr__(self, "lam_dir", lam_dir)
        object.__setattr__(self, "set_id", label_set_id(sha))
        object.__setattr__(self, "k_seconds", float(card["k_seconds"]))
        object.__setattr__(self, "encoder", card["encoder"])
        cfg = card["config"]["model"]
        object.__setattr__(self, "attrs", {
            "lam": {"dir": lam_dir, "weights_sha256": sha, "store": card["store"], "steps": card.get("steps"),
                    "lawam_version": card.get("lawam_version"), "bottleneck": cfg["bottleneck"]},
            "encoder": card["encoder"], "k_seconds": float(card["k_seconds"]), "dim": int(card["latent_dim"]),
            "queries": int(cfg["queries"]),
        })

    def __call__(self):
        model, _ = load_lawm(self.lam_dir)
        device = torch.device("cuda" if self.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if self.device == "auto" else self.device))
        model.to(device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

        @torch.inference_mode()
        def fn(f_t: np.ndarray, f_tk: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            with autocast:
                out = model.encode(torch.from_numpy(f_t).to(device), torch.from_numpy(f_tk).to(device))
            codes = None if out.codes is None else out.codes.cpu().numpy()
            return out.mu.float().cpu().numpy(), codes

        return fn
