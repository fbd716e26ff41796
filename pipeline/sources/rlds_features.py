"""The layout of an RLDS dataset, from its TFDS `features.json`: which flattened keys its records
hold, what each is, and its shape per step — never guessed from the data.

TFDS writes an RLDS episode as one `tf.train.Example` whose keys are the feature paths joined
by `/`: `steps/observation/image`, `steps/action`, `episode_metadata/file_path`. Everything
under the `steps` sequence (a TFDS `Dataset` feature) is stacked over the episode's steps and
flattened: `steps/action` of shape (7,) holds steps x 7 floats, an image feature one encoded
JPEG/PNG per step, a text feature one string per step. This module reads `features.json` into
`Feature`s (kind, per-step shape, dtype, encoding) and resolves a source spec's `cameras`,
`action_fields`, `state_fields` and `instruction_field` against them, so a typo fails before
anything runs, with the keys that do exist in the message.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from pipeline.sources.base import SourceError, reraise_if_infrastructure
from pipeline.uri import join_uri, open_uri

STEPS = "steps"
OBSERVATION = "steps/observation/"
INSTRUCTION = "steps/language_instruction"
# Episode ids, in order of preference: the path of the file the episode was converted from (OXE,
# kpertsch/rlds_dataset_builder), DROID's recording folder. Else shard + record index.
ID_KEYS = ("episode_metadata/file_path", "episode_metadata/recording_folderpath")


@dataclass(frozen=True)
class Feature:
    key: str  # flattened name in the records: steps/observation/image
    kind: str  # "image" | "tensor" | "text" | other TFDS class name (not read)
    shape: tuple[int, ...]  # per step for steps/ features (per episode otherwise); () for scalars
    dtype: str  # numpy name: uint8, float32, float64, bool, int64; "string" for text
    encoding: str | None = None  # image: jpeg | png; tensor: none | bytes | zlib

    @property
    def per_step(self) -> bool:
        return self.key.startswith(STEPS + "/")

    @property
    def width(self) -> int:
        """Values per step (1 for a scalar)."""
        return math.prod(self.shape) if self.shape else 1


def _shape(node: dict[str, Any]) -> tuple[int, ...]:
    dims = (node.get("shape") or {}).get("dimensions") or []
    return tuple(int(d) for d in dims)


def _walk(node: dict[str, Any], prefix: str, out: dict[str, Feature]) -> None:
    if "featuresDict" in node:
        for name, child in (node["featuresDict"].get("features") or {}).items():
            _walk(child, f"{prefix}/{name}" if prefix else name, out)
    elif "sequence" in node:  # tfds Dataset / Sequence: its features are stacked under the same prefix
        _walk(node["sequence"].get("feature") or {}, prefix, out)
    elif "image" in node:
        img = node["image"]
        out[prefix] = Feature(prefix, "image", _shape(img), img.get("dtype", "uint8"),
                              img.get("encodingFormat", "png"))
    elif "tensor" in node:
        t = node["tensor"]
        out[prefix] = Feature(prefix, "tensor", _shape(t), t.get("dtype", "float32"), t.get("encoding", "none"))
    elif "text" in node:
        out[prefix] = Feature(prefix, "text", (), "string")
    else:
        cls = str(node.get("pythonClassName", "unknown")).rsplit(".", 1)[-1]
        out[prefix] = Feature(prefix, cls, (), "")


def read_features(folder: str) -> dict[str, Feature]:
    """Flattened key -> Feature of the dataset at `folder` (its version folder). SourceError
    when `features.json` is missing, unreadable, or has no `steps` sequence."""
    path = join_uri(folder, "features.json")
    try:
        with open_uri(path, "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        raise SourceError(f"{path}: not found; an RLDS dataset folder (as TFDS writes it) holds features.json "
                          "beside its TFRecord shards: point `uri` at it") from None
    except (OSError, ValueError) as e:
        reraise_if_infrastructure(e)
        raise SourceError(f"{path}: unreadable ({e}); re-download the dataset") from None
    out: dict[str, Feature] = {}
    if not isinstance(doc, dict):
        raise SourceError(f"{path}: not a TFDS features.json (a JSON object)")
    _walk(doc, "", out)
    if not any(k.startswith(STEPS + "/") for k in out):
        raise SourceError(f"{path}: no `steps` sequence; not an RLDS dataset (top-level features: "
                          f"{sorted({k.split('/')[0] for k in out})!r})")
    return out


@dataclass(frozen=True)
class Selection:
    """What to read of each record, resolved against `features.json`."""

    camera: str  # flattened image key
    actions: list[Feature]
    state: list[Feature]
    instruction: str | None  # flattened text key (per step or per episode), if any

    def names(self, fields: list[Feature]) -> list[str]:
        """One name per column of `fields` concatenated: the key under steps/, indexed when wide."""
        out = []
        for f in fields:
            short = f.key.removeprefix(STEPS + "/")
            out += [short] if f.width == 1 else [f"{short}[{i}]" for i in range(f.width)]
        return out


def _tensor_fields(features: dict[str, Feature], wanted: list[str], what: str, where: str) -> list[Feature]:
    out = []
    tensors = sorted(k.removeprefix(STEPS + "/") for k, f in features.items() if f.per_step and f.kind == "tensor")
    for name in wanted:
        key = f"{STEPS}/{name.strip('/')}"
        f = features.get(key)
        if f is None:
            under = sorted(k.removeprefix(key + "/") for k in features if k.startswith(key + "/"))
            if under:
                raise SourceError(f"{where}: {what} field {name!r} is a dict of {under!r}; list the ones to "
                                  f"concatenate, in order (e.g. {name}/{under[0]})")
            raise SourceError(f"{where}: {what} field {name!r} is not a feature under steps/; "
                              f"tensor features: {tensors!r}")
        if f.kind != "tensor":
            raise SourceError(f"{where}: {what} field {name!r} is a {f.kind} feature, not a tensor; "
                              f"tensor features: {tensors!r}")
        if f.encoding not in (None, "none"):
            raise SourceError(f"{where}: {what} field {name!r} is stored with encoding {f.encoding!r}; "
                              "only plain tensors (encoding none) are read")
        out.append(f)
    return out


def select(features: dict[str, Feature], *, cameras: list[str], kind: str, action_fields: list[str],
           state_fields: list[str], instruction_field: str | None, where: str) -> Selection:
    """Resolve one camera (`cameras[0]`, else the first image under steps/observation) and the
    fields; SourceError listing the keys that exist when one is unknown."""
    images = [k.removeprefix(OBSERVATION) for k, f in features.items() if k.startswith(OBSERVATION)
              and f.kind == "image"]
    if cameras:
        camera = cameras[0].removeprefix("observation/")
        if camera not in images:
            raise SourceError(f"{where}: camera {cameras[0]!r} is not an image under steps/observation; "
                              f"cameras: {images!r}")
    elif images:
        camera = images[0]
    else:
        raise SourceError(f"{where}: no image feature under steps/observation; an RLDS source needs a camera")
    actions: list[Feature] = []
    state: list[Feature] = []
    if kind == "robot":
        if not action_fields and f"{STEPS}/action" not in features:
            raise SourceError(f"{where}: no steps/action feature; name the action in `action_fields`")
        actions = _tensor_fields(features, action_fields or ["action"], "action", where)
        default_state = ["observation/state"] if features.get(f"{STEPS}/observation/state") else []
        state = _tensor_fields(features, state_fields or default_state, "state", where)
    texts = [k for k, f in features.items() if f.kind == "text"]
    instruction = INSTRUCTION if INSTRUCTION in texts else None
    if instruction_field:
        for key in (f"{STEPS}/{instruction_field}", instruction_field):
            if key in texts:
                instruction = key
                break
        else:
            raise SourceError(f"{where}: instruction_field {instruction_field!r} is not a text feature; "
                              f"text features: {sorted(t.removeprefix(STEPS + '/') for t in texts)!r}")
    return Selection(OBSERVATION + camera, actions, state, instruction)
