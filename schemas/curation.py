"""The curation config (`lawam curate --config curate.yaml`, or `curation:` in a corpus YAML):
how still stretches and near-duplicate episodes are found in the stored features.

Every field has a default; unknown fields fail at load time. The config's hash, with the
encoder identity of the store, is the curation set's id (`schemas.identity.curation_set_id`):
change a field and `lawam curate` writes a new set beside the old one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from schemas.errors import ConfigError
from schemas.strict import Strict as _Strict
from schemas.strict import read_yaml, validate_file


class MotionConfig(_Strict):
    """Per frame, how much the picture changes; still stretches are dropped from training."""

    # A frame's motion is the smaller of its features' change to the frame this far before and
    # to the frame this far after, so a still stretch ends exactly where the picture starts to
    # change; a longer gap lets slow motion add up above sensor noise, which does not.
    gap_seconds: Annotated[float, Field(gt=0)] = 0.5
    # Motion is standardised per source: divided by the source's typical motion (this quantile of
    # its frames' changes, measured when the source is first curated and kept, so earlier
    # decisions never move). A high quantile stays put while much of a source is still.
    reference_quantile: Annotated[float, Field(gt=0, lt=1)] = 0.9
    idle_below: Annotated[float, Field(gt=0)] = 0.35  # standardised motion under which a frame is still
    # Relative feature change (|f_t - f_t±gap| / |f_t|, the mean over tokens) under which a still span's
    # median frame shows one picture held (reason "static"); else "idle" (noise, a shaking camera).
    static_below: Annotated[float, Field(ge=0)] = 0.01
    # A still stretch is dropped only when it lasts this long: a short pause is part of a task.
    min_seconds: Annotated[float, Field(ge=0)] = 1.0


class DuplicatesConfig(_Strict):
    """Per episode, an embedding; episodes whose embeddings are this close form a group of which
    training keeps one."""

    # Cosine of two episodes' embeddings at or above which they are duplicates.
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.95
    # The embedding: the episode's standardised features averaged over this many equal stretches
    # of its duration (its course in time, so two episodes of one scene differ), then projected
    # to `dim` numbers by a fixed random matrix (seeded by `seed`) and scaled to unit length.
    segments: Annotated[int, Field(ge=1, le=64)] = 4
    dim: Annotated[int, Field(ge=8, le=4096)] = 256
    seed: int = 0
    # Neighbours looked at per episode when the search is approximate (HNSW, past `exact_pairs`
    # candidate pairs): a group larger than this is still joined through its members' neighbours.
    neighbours: Annotated[int, Field(ge=1, le=1024)] = 32
    exact_pairs: Annotated[int, Field(ge=0)] = 2_000_000_000  # new x all comparisons done exactly, in blocks


class CurationConfig(_Strict):
    """Everything `lawam curate` needs besides the store."""

    motion: MotionConfig = MotionConfig()
    duplicates: DuplicatesConfig = DuplicatesConfig()


def load_curation_config(path: str | Path | None) -> CurationConfig:
    """Load `curate.yaml` (all fields optional); None gives the defaults."""
    if path is None:
        return CurationConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    return validate_file(CurationConfig, read_yaml(path), path)
