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
import logging
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.errors import one_line
from schemas.cards import CARD_TYPES, Card, LawmLineage
from schemas.errors import ConfigError
from schemas.identity import label_set_id

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CARD = "card.json"
RESUME = "resume"


class CheckpointError(ConfigError):
    """A checkpoint folder is missing, incomplete, damaged or of another kind: the folder or
    file named on the command line is not what the command needs (exit 2, the file named)."""


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
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: damaged card, not JSON ({type(e).__name__} at byte {_position(e)}); "
                              "restore the file or train again") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: damaged card, a JSON {type(data).__name__} where an object belongs; "
                              "restore the file or train again")
    got = data.get("kind")
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
    """What a policy or a label set names of the LaWM in `lam_dir`: its card's lineage, and the
    label set of the card as it reads now (`LawmCard.contents_label_set`: an edited card labels
    into a set of its own). Weights whose sha256 is not the card's `weights_sha256` (damaged or
    replaced since training) are refused: nothing may be labelled or distilled from them."""
    lam_dir = Path(lam_dir).resolve()
    card = read_card(lam_dir, "lawm")
    sha = file_sha256(lam_dir / WEIGHTS)
    if sha != card.weights_sha256:
        raise CheckpointError(f"{lam_dir / WEIGHTS}: sha256 {sha[:12]}... is not the card's weights_sha256 "
                              f"{card.weights_sha256[:12]}...: the weights changed since training (damaged or "
                              "replaced); restore them or train the LaWM again")
    label_set = card.contents_label_set(sha)
    if label_set != card.label_set and card.label_set == label_set_id(card.weights_sha256):
        log.info("%s was trained before label sets were named by the whole card: its labels go to %s (the set "
                 "%s it named stays readable by that name)", lam_dir, label_set, card.label_set)
    elif label_set != card.label_set:
        log.warning("%s: the card says label set %s, its contents make %s (edited since training?): labels go "
                    "to %s", lam_dir / CARD, card.label_set, label_set, label_set)
    return LawmLineage(dir=str(lam_dir), weights_sha256=sha, store=card.store, config=card.config,
                       state_dim=card.state_dim, action_dim=card.action_dim, horizon=card.horizon,
                       vocab=card.vocab, k_seconds=card.k_seconds, label_set=label_set)


def _position(e: UnicodeDecodeError | json.JSONDecodeError) -> int:
    return e.start if isinstance(e, UnicodeDecodeError) else e.pos


def load_weights(module: torch.nn.Module, out_dir: str | Path) -> None:
    """DIR/model.safetensors into `module`. CheckpointError naming the file when it is damaged
    (truncated, overwritten: safetensors refuses its header) or holds another model's tensors."""
    path = Path(out_dir) / WEIGHTS
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, FileNotFoundError, IsADirectoryError) as e:
        raise CheckpointError(f"{path}: damaged weights ({one_line(e)}); restore the file or train again") from None
    try:
        module.load_state_dict(state)
    except RuntimeError:  # missing or unexpected keys, other shapes
        raise CheckpointError(f"{path}: not the weights its card describes (tensor names or shapes differ); "
                              "restore the file or train again") from None


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
