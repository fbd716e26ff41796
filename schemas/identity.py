"""Identities that version what the store holds: which encoder made the features, and how an
episode's frames were sampled. One record each, built in one place, compared in one place.

- `EncoderIdentity`: everything that changes the numbers an encoder stores (model, weights
  hash, preprocessing, token mode, layer, and the runtime and precision that computed them).
  It is written into the store's attributes and into every checkpoint card; features of two
  identities never mix (`require_same`).
- `SamplingParams`: how one episode's frames are picked and resized. With the episode's
  content hash it makes the *ingest hash* (`ingest_hash`): an episode is redone exactly when
  its bytes or its sampling change.

Both are stored as plain JSON dicts (`to_dict`, in store attributes and cards) and read back
with `from_dict`, so a store or card written before a field existed still opens: the missing
field takes the value that the older code implied.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

from schemas.errors import ConfigError, StoreMismatchError

_RANDOM_INIT = re.compile(r"random-init:seed=(-?\d+)")


def random_init_weights(seed: int) -> str:
    """The `weights` of a randomly initialised encoder: its seed is its identity."""
    return f"random-init:seed={seed}"


@dataclass(frozen=True)
class EncoderIdentity:
    """Everything that changes the numbers stored (batch size and device do not)."""

    model: str  # timm model name
    weights: str  # "sha256:<hex>" of a local checkpoint, or "random-init:seed=N"
    image_size: int  # square input side, pixels
    mean: tuple[float, ...]  # per-channel normalisation the model was trained with
    std: tuple[float, ...]
    tokens: str  # cls | mean | patches | grid:HxW
    layer: int  # block whose output is stored; -1 = last
    # What computed the features: torch | openvino | onnxruntime, and fp32 | bf16. Stores and
    # cards written before these fields existed were computed by torch in fp32 (on a GPU, in
    # bf16 autocast, which the identity did not tell apart): a dict without them reads so.
    runtime: str = "torch"
    precision: str = "fp32"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "encoder identity") -> EncoderIdentity:
        """From a store attribute or a card; ConfigError naming `where` when it is not one."""
        if isinstance(d, EncoderIdentity):
            return d
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: expected a mapping of encoder fields, got {type(d).__name__}")
        try:
            return cls(model=str(d["model"]), weights=str(d["weights"]), image_size=int(d["image_size"]),
                       mean=tuple(float(x) for x in d["mean"]), std=tuple(float(x) for x in d["std"]),
                       tokens=str(d["tokens"]), layer=int(d["layer"]),
                       runtime=str(d.get("runtime", "torch")), precision=str(d.get("precision", "fp32")))
        except (KeyError, TypeError, ValueError) as e:
            missing = sorted({f.name for f in fields(cls) if f.default is MISSING} - set(d))
            what = f"missing {missing}" if missing else f"{type(e).__name__}: {e}"
            raise ConfigError(f"{where}: not an encoder identity ({what})") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written into store attributes and cards."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @property
    def seed(self) -> int | None:
        """The init seed of a randomly initialised encoder; None for one loaded from a checkpoint."""
        m = _RANDOM_INIT.fullmatch(self.weights)
        return int(m.group(1)) if m else None

    def differences(self, other: EncoderIdentity) -> list[str]:
        """Names of the fields in which the two identities differ."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    def same_settings(self, *, model: str, weights: str, image_size: int, tokens: str, layer: int,
                      runtime: str, precision: str) -> bool:
        """Whether an encoder configured with these settings computes these features, judged
        without building it (mean/std come from timm's model registry and are checked once the
        model is built): a no-op ingest needs neither torch nor timm."""
        return (self.model, self.weights, self.image_size, self.tokens, self.layer, self.runtime,
                self.precision) == (model, weights, image_size, tokens, layer, runtime, precision)

    @property
    def numerics(self) -> str:
        """`torch fp32`, `openvino bf16`: what computed the features."""
        return f"{self.runtime} {self.precision}"

    def describe(self) -> str:
        """One line for people: `vit_small_patch14_dinov2 @112 px, grid:4x4, layer -1, random-init:seed=0,
        openvino bf16`."""
        weights = self.weights if len(self.weights) <= 24 else self.weights[:19] + "..."
        return f"{self.model} @{self.image_size} px, {self.tokens}, layer {self.layer}, {weights}, {self.numerics}"

    def require_same(self, other: EncoderIdentity, *, ours: str, theirs: str, fix: str) -> None:
        """Raise `StoreMismatchError` (a config error, exit 2) unless `other` is this identity:
        features of two encoders — or of two numerics of one encoder — never mix. `ours`/`theirs`
        name what holds each identity ("store 'x'", "the LaWM in runs/lam"); `fix` says what to do."""
        diff = self.differences(other)
        if diff and set(diff) <= {"runtime", "precision"}:
            raise StoreMismatchError(
                f"{ours} holds features computed by {self.numerics}; {theirs} computes them with {other.numerics} "
                f"(encoder {other.model} @{other.image_size} px otherwise the same). Features of two numerics "
                f"never mix: {fix}")
        if diff:
            raise StoreMismatchError(
                f"{ours} holds features of encoder {self.describe()}; {theirs} uses {other.describe()} "
                f"(differs in {', '.join(diff)}). Features of two encoders never mix: {fix}")


@dataclass(frozen=True)
class SamplingParams:
    """How one episode's frames are picked (by timestamp at `fps`) and resized (to `size`
    square, by `resize`), and how much of it is kept."""

    fps: float
    size: int
    resize: str = "center_crop"  # center_crop | squash
    max_seconds: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamplingParams:
        return cls(fps=float(d["fps"]), size=int(d["size"]), resize=str(d.get("resize", "center_crop")),
                   max_seconds=None if d.get("max_seconds") is None else float(d["max_seconds"]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def ingest_hash(self, content_hash: str) -> str:
        """What decides whether an episode must be (re)done: its bytes and how it is sampled.
        The JSON spelling is part of every store's index: changing it would redo every episode."""
        payload = json.dumps({"content": content_hash, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def ingest_hasher(self) -> Callable[[str], str]:
        """`ingest_hash` as a function of the content hash, hashing the same bytes with the JSON
        around the content spelled once: planning a million episodes is not a million `json.dumps`."""
        mark = "\x00lawam\x00"
        head, tail = json.dumps({"content": mark, **self.to_dict()}, sort_keys=True).split(json.dumps(mark))
        quote, sha256 = json.encoder.encode_basestring_ascii, hashlib.sha256  # what json.dumps does to a str
        return lambda content: sha256((head + quote(content) + tail).encode()).hexdigest()[:32]


def label_set_id(weights_sha256: str, shaping: Mapping[str, Any] | None = None) -> str:
    """The id of the label set a LaWM writes: `lam-` + 12 hex digits of a hash of its weights
    and of `shaping`, every field of its card that changes the labels (its gap k, the feature
    mean/std it standardises with, the encoder identity and token shape of its features, its
    model config: `schemas.cards.label_shaping`). Two LaWMs that would label differently never
    share a set, so a card edited by hand (another `k_seconds`) labels into a set of its own.

    Without `shaping`: the id of the weights alone, as label sets were named before (a store
    labelled then keeps those sets, readable by that name; `lawam label` writes new ones)."""
    if shaping is None:
        return f"lam-{weights_sha256[:12]}"
    payload = json.dumps({"weights_sha256": weights_sha256, **shaping}, sort_keys=True, separators=(",", ":"))
    return f"lam-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def curation_set_id(config: Mapping[str, Any], encoder: EncoderIdentity | None) -> str:
    """The id of the curation set a curation config writes into a store: `cur-` + 12 hex digits
    of the config (as JSON, every field spelled out) and the store's encoder identity, since the
    same config scores another encoder's features differently."""
    payload = json.dumps({"config": dict(config), "encoder": encoder.to_dict() if encoder else None},
                         sort_keys=True, default=str)
    return f"cur-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


__all__ = ["EncoderIdentity", "SamplingParams", "curation_set_id", "label_set_id", "random_init_weights"]
