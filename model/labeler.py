"""A trained LaWM as a labeler for `pipeline.label.label_store`.

Built on the driver from the checkpoint's card and lineage, with the weights loaded once
there too (a few MB): a damaged card or weights file fails on the driver in one line naming
the file, before any actor starts (an actor's failing constructor reaches the driver as
Ray's ActorDiedError, its cause lost). Every worker loads the weights again when it calls
it. The label set is keyed by the sha256 of `model.safetensors`, so two checkpoints never
share a set, and retraining gives a new set beside the old one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model.checkpoint import lawm_lineage, read_card
from model.train_lam import load_lawm
from schemas.identity import EncoderIdentity


@dataclass(frozen=True)
class IdmLabeler:
    lam_dir: str
    device: str = "auto"  # auto = CUDA when present (bf16 autocast), else CPU
    set_id: str = field(init=False)
    attrs: dict[str, Any] = field(init=False)
    k_seconds: float = field(init=False)
    encoder: EncoderIdentity = field(init=False)

    def __post_init__(self) -> None:
        load_lawm(self.lam_dir)  # damaged or foreign weights: CheckpointError here, not in an actor
        lineage = lawm_lineage(self.lam_dir)  # the weights as they are now, not as the card says
        card = read_card(lineage.dir, "lawm")
        object.__setattr__(self, "lam_dir", lineage.dir)
        object.__setattr__(self, "set_id", lineage.label_set)
        object.__setattr__(self, "k_seconds", card.k_seconds)
        object.__setattr__(self, "encoder", card.encoder)
        object.__setattr__(self, "attrs", {
            "lam": {**lineage.model_dump(mode="json"), "steps": card.steps, "lawam_version": card.lawam_version},
            "encoder": card.encoder.to_dict(), "k_seconds": card.k_seconds, "dim": card.latent_dim,
            "queries": int(card.config["model"]["queries"]),
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
