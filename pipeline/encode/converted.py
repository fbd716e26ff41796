"""Converted encoders on disk: an OpenVINO IR or an ONNX file per encoder, so converting (a
torch trace, seconds to a minute) is paid once per machine, not in every actor.

An entry (a folder) is keyed by everything that decides its contents: the encoder identity
but its numerics (model, weights hash or seed, size, normalisation, tokens, layer) and the
versions of torch, timm and the converter. It is written under a unique name beside its
final one and renamed into place in one step, so processes converting the same encoder at
once leave one whole entry, and a reader never sees half of one. An entry that does not
load is converted again.

The folder is `$LAWAM_CACHE_DIR/encoders` (default `~/.cache/lawam/encoders`); deleting it
is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from schemas.identity import EncoderIdentity

GRAPH_VERSION = 1  # bump when TokenNet computes something else


def cache_dir() -> Path:
    root = os.environ.get("LAWAM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "lawam")
    return Path(root) / "encoders"


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "none"


def converted_path(identity: EncoderIdentity, converter: str) -> Path:
    """The folder where the `converter` ("openvino", "onnx") form of `identity`'s encoder is kept."""
    what = {k: v for k, v in identity.to_dict().items() if k not in ("runtime", "precision")}
    what |= {"graph": GRAPH_VERSION, "torch": _version("torch"), "timm": _version("timm"),
             converter: _version(converter)}
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / f"{identity.model}-{identity.image_size}px-{converter}-{key}"


def publish(tmp: Path, final: Path) -> None:
    """Move the folder `tmp` to `final` in one step; when another process got there first,
    its entry stays and `tmp` is removed."""
    try:
        os.rename(tmp, final)
    except OSError:  # `final` exists (a non-empty folder): the other writer's entry is as good
        shutil.rmtree(tmp, ignore_errors=True)


def staging(final: Path) -> Path:
    """A new, unique folder beside `final` to write an entry into before `publish`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    return tmp
