"""What the store says about itself: codecs, dimension names and attributes of every array.

Every array the writers create carries a CRC32C checksum of each encoded chunk (Zarr v3's
`crc32c` codec, after zstd), so a damaged chunk fails to decode instead of returning wrong
numbers, and Zarr v3 `dimension_names` plus attributes (units, origin, meaning) so the store
reads with plain `icechunk` + `zarr`. The layout is described in docs/store-format.md.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from zarr.codecs import Crc32cCodec, ZstdCodec

FORMAT_DOC = "docs/store-format.md in the lawam repository"
LABELS_GROUP = "labels"  # /labels/<set>: label sets
CURATION_GROUP = "curation"  # /curation/<set>: curation sets ...
SPANS = "spans"  # ... and their still spans


def no_state(rows: int, shape: tuple[int, ...]) -> np.ndarray:
    """The `state` rows of an episode without state in a shard whose other episodes have it:
    NaN, so `state` stays row for row beside `actions` (docs/store-format.md)."""
    return np.full((rows, *shape), np.nan, np.float32)


def has_no_state(state: np.ndarray) -> bool:
    """Whether an episode's `state` rows are `no_state` ones."""
    return len(state) > 0 and bool(np.isnan(state).all())


def checksummed() -> list:
    """The bytes-to-bytes codecs of every array we write: zstd, then a CRC32C of the result
    (checked before decompressing, so truncation and bit flips are caught alike)."""
    return [ZstdCodec(), Crc32cCodec()]


@cache
def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide the stored bytes (read from package metadata,
    nothing imported)."""
    out = {}
    for dist in ("lawam", "numpy", "zarr", "icechunk", "timm", "torch", "av", "decord", "Pillow"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


# Per shard array: dimension names and attributes. Rows of every array are frames (or control
# steps) of several episodes back to back; the index (/index) says which rows are whose.
SHARD_ARRAYS: dict[str, tuple[tuple[str, ...], dict]] = {
    "features": (("frame", "token", "channel"), {
        "description": "frozen-encoder features, one row per kept frame (root attrs 'encoder' say which model, "
                       "tokens and layer)"}),
    "timestamps": (("frame",), {
        "description": "presentation time of each kept frame", "units": "s", "origin": "episode start"}),
    "actions": (("step", "action"), {
        "description": "robot actions at the control rate, in the source's own units and order"}),
    "action_timestamps": (("step",), {
        "description": "time of each action row, on the frames' clock", "units": "s", "origin": "episode start"}),
    "state": (("step", "state"), {
        "description": "proprioceptive state at each action row, in the source's own units and order"}),
}


def dimension_names(name: str, ndim: int) -> tuple[str, ...]:
    """Dimension names of shard array `name` with `ndim` dimensions ("dim_i" past the known ones)."""
    known = SHARD_ARRAYS.get(name, ((), {}))[0]
    if len(known) == ndim:
        return known
    if name == "features" and ndim == 2:  # a pooled token mode: one vector per frame
        return ("frame", "channel")
    return tuple(known[:ndim]) + tuple(f"dim_{i}" for i in range(len(known), ndim))


def array_attributes(name: str, **extra) -> dict:
    """Attributes of shard array `name`: what it holds, units and origin, plus `extra`."""
    attrs = dict(SHARD_ARRAYS.get(name, ((), {}))[1])
    attrs.update({k: v for k, v in extra.items() if v is not None})
    return attrs
