"""The card of a trained model (`card.json` beside `model.safetensors`): what the model is and
what it was made from. One record per kind, validated when read, so a card that was edited by
hand or cut short fails in one line naming the file and the field, not deep in a trainer.

Lineage (DESIGN.md): a LaWM card names the store version and encoder identity it read; a
policy card names the store version, the label set, the LaWM (`LawmLineage`) and the encoder.
From a policy a user can walk back to the video bytes.

    card = read_card("runs/lam", "lawm")        # model.checkpoint.read_card: a LawmCard
    card.store.version, card.encoder.describe(), card.metrics["forward_over_copy"]

A run that stops before its last step (Ctrl-C, `stop_at`) writes no card: the trainer returns
a `StoppedRun`, resumable with `--resume`.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from schemas.identity import EncoderIdentity, label_set_id

LAWM = "lawm"
POLICY = "lawam-policy"


class _Record(BaseModel):
    # Unknown fields are kept (a card written by a newer lawam still opens); known ones are typed.
    model_config = ConfigDict(extra="allow", frozen=True)


class StoreRef(_Record):
    """One pinned version of a feature store."""

    uri: str
    version: str
    tag: str | None = None  # the tag that keeps this version through `lawam gc`; None: not tagged


def label_shaping(card: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a LaWM card (as a mapping, typed or JSON) that change the labels it writes,
    in one canonical JSON form: what `label_set_id` hashes beside the weights. Training settings
    (optim, the pair selection) shaped the weights, which are hashed themselves."""
    config = card.get("config") or {}
    return {
        "k_seconds": float(card["k_seconds"]),
        "feature_mean": [float(x) for x in card["feature_mean"]],
        "feature_std": [float(x) for x in card["feature_std"]],
        "encoder": EncoderIdentity.from_dict(card["encoder"]).to_dict(),
        "token_shape": [int(x) for x in card["token_shape"]],
        "state_dim": int(card.get("state_dim") or 0),
        "latent_dim": int(card["latent_dim"]),
        "model": config.get("model") if isinstance(config, Mapping) else None,
    }


class LawmLineage(_Record):
    """What a policy, or a label set, names of the LaWM it came from."""

    dir: str  # the LaWM's output folder, absolute
    weights_sha256: str  # of its model.safetensors, as read when the policy was distilled
    store: StoreRef  # the store version the LaWM was trained on
    config: dict[str, Any] | None = None  # its LamConfig (shapes the frozen LaWM inside a policy)
    state_dim: int = 0
    action_dim: int = 0  # its auxiliary action head's chunk shape (0: no head) ...
    horizon: int = 0
    vocab: list[str] | None = None  # ... and the words its instruction-conditioned FDM knows (None: not conditioned)
    k_seconds: float | None = None  # its frame gap: the gap of its labels
    label_set: str  # the label set its labels go into (`LawmCard.contents_label_set`)

    @model_validator(mode="before")
    @classmethod
    def _legacy_label_set(cls, data: Any) -> Any:
        # A lineage written before label sets hashed the whole card named its set by the weights.
        if isinstance(data, Mapping) and not data.get("label_set") and data.get("weights_sha256"):
            data = {**data, "label_set": label_set_id(str(data["weights_sha256"]))}
        return data


class _Card(_Record):
    kind: str
    lawam_version: str
    created_at: str
    store: StoreRef  # the version the run read
    encoder: EncoderIdentity  # of the features it read
    token_shape: tuple[int, ...]  # (T, D) of one frame's features
    config: dict[str, Any]  # the trainer's config, as validated
    steps: int
    wall_time_s: float
    pairs_per_s: float = 0.0
    workers: int = 1
    device: str = "cpu"
    metrics: dict[str, float]  # held-out metrics
    weights_sha256: str  # of model.safetensors
    reused: bool = False  # set by the flows when a finished run was returned instead of retrained

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class LawmCard(_Card):
    """A latent world model (`lawam train-lam`)."""

    kind: Literal["lawm"] = LAWM
    state_dim: int = 0
    action_dim: int = 0  # chunk shape of the auxiliary action head (0: none; model.action_weight)
    horizon: int = 0
    vocab: list[str] | None = None  # words of the instruction-conditioned FDM (None: model.fdm_instruction off)
    latent_dim: int
    k_seconds: float  # the frame gap it was trained at: labels are written at this gap
    feature_mean: list[float]  # (D,) the standardisation its IDM and FDM work in
    feature_std: list[float]
    label_set: str  # the label set its labels go into, as computed when it was trained

    @model_validator(mode="before")
    @classmethod
    def _derive_label_set(cls, data: Any) -> Any:
        # A card being made (the trainer leaves it out) gets the set of its contents.
        if isinstance(data, Mapping) and not data.get("label_set") and data.get("weights_sha256"):
            with suppress(KeyError, TypeError, ValueError):  # a broken card: field validation names the fault
                data = {**data, "label_set": label_set_id(str(data["weights_sha256"]), label_shaping(data))}
        return data

    def contents_label_set(self, weights_sha256: str | None = None) -> str:
        """The label set of this card as it reads now with these weights (default: the card's
        `weights_sha256`): differs from `label_set` when the card was edited since training."""
        return label_set_id(weights_sha256 or self.weights_sha256, label_shaping(self.model_dump(mode="json")))


class PolicyCard(_Card):
    """A LaWAM policy (`lawam distill`), or its behaviour-cloning ablation (`subgoal` false)."""

    kind: Literal["lawam-policy"] = POLICY
    label_set: str | None = None  # the LaWM's latent actions it distilled; None for BC
    lawm: LawmLineage | None = None  # the frozen LaWM inside; None for BC
    state_dim: int = 0
    action_dim: int
    horizon: int
    control_hz: float | None = None  # rate of the chunk's actions; None: sources of mixed rates
    vocab: list[str]
    subgoal: bool = True
    action_fraction: float = 1.0
    proprio: str | None = None


Card = LawmCard | PolicyCard
CARD_TYPES: dict[str, type[LawmCard] | type[PolicyCard]] = {LAWM: LawmCard, POLICY: PolicyCard}


@dataclass(frozen=True)
class StoppedRun:
    """A training run stopped before its last step (Ctrl-C, `stop_at`): no card was written;
    `--resume` continues it."""

    kind: str
    steps: int | None = None


__all__ = ["CARD_TYPES", "LAWM", "POLICY", "Card", "LawmCard", "LawmLineage", "PolicyCard", "StoppedRun",
           "StoreRef", "label_shaping"]
