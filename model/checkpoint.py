"""Checkpoints: `model.safetensors` + `card.json`, and the resumable trainer state beside them.

    DIR/model.safetensors   weights and buffers (feature mean/std included); nothing is pickled
    DIR/card.json           what the model is and what it was made from (lineage)
    DIR/resume/             optimizer, scheduler, RNG and data position of the last checkpoint

A card names the store (uri + version) and encoder identity it read, the config it was built
with and the sha256 of its weights file; a label set is keyed by that hash. Loading reads
safetensors and `torch.load(weights_only=True)` only: a checkpoint from anywhere can be opened
without running its code.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from schemas.cards import CARD_TYPES, Card, LawmLineage

WEIGHTS = "model.safetensors"
CARD = "card.json"
RESUME = "resume"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or of another kind."""


def lawam_version() -> str:
    try:
        return version("lawam")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0+unknown"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_weights(module: torch.nn.Module, out_dir: Path) -> str:
    """Write DIR/model.safetensors atomically; returns the sha256 of the file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = out_dir / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, out_dir / WEIGHTS)
    return file_sha256(out_dir / WEIGHTS)


def write_card(out_dir: Path, card: Card) -> None:
    _atomic_write(out_dir / CARD, json.dumps(card.to_json(), indent=2).encode())


def read_card(out_dir: str | Path, kind: str | None = None) -> Card:
    """The typed card of a training output folder (of `kind` when given): the one way a card
    is read. A missing, cut or hand-broken card is a CheckpointError naming the file and field."""
    out_dir = Path(out_dir)
    path = out_dir / CARD
    if not path.is_file() or not (out_dir / WEIGHTS).is_file():
        raise CheckpointError(f"{out_dir}: no {CARD} and {WEIGHTS} here (is it a training output folder?)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable card: {e}") from None
    got = data.get("kind") if isinstance(data, dict) else None
    if kind and got != kind:
        raise CheckpointError(f"{out_dir}: a {got!r} checkpoint, expected {kind!r}")
    if got not in CARD_TYPES:
        raise CheckpointError(f"{path}: not a card of a lawam model (kind {got!r})")
    try:
        return CARD_TYPES[got].model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise CheckpointError(f"{path}: {field}: {first['msg']} ({e.error_count()} problem(s) in the card)") from None


def lawm_lineage(lam_dir: str | Path) -> LawmLineage:
    """What a policy or a label set names of the LaWM in `lam_dir`: its card's lineage and the
    sha256 of its weights file as it is now (not as the card says)."""
    lam_dir = Path(lam_dir).resolve()
    card = read_card(lam_dir, "lawm")
    return LawmLineage(dir=str(lam_dir), weights_sha256=file_sha256(lam_dir / WEIGHTS), store=card.store,
                       config=card.config, state_dim=card.state_dim, action_dim=card.action_dim,
                       horizon=card.horizon, vocab=card.vocab, k_seconds=card.k_seconds)


def load_weights(module: torch.nn.Module, out_dir: str | Path) -> None:
    module.load_state_dict(load_file(str(Path(out_dir) / WEIGHTS), device="cpu"))


def save_resume_state(out_dir: Path, rank: int, state: dict[str, Any]) -> None:
    """Optimizer/scheduler/RNG/position of one rank, atomically (torch tensors and plain values only)."""
    d = out_dir / RESUME
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"rank{rank}.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, d / f"rank{rank}.pt")


def load_resume_state(out_dir: Path, rank: int) -> dict[str, Any] | None:
    path = out_dir / RESUME / f"rank{rank}.pt"
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
