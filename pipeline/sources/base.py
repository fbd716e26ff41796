"""What a source adapter hands to the rest of the pipeline: episode references, no pixels.

An `EpisodeRef` is small, picklable and cheap to make: enumerating a source reads
metadata (file listings, LeRobot `meta/`, HDF5 keys) and never decodes video. Actions
are loaded later, next to the decode, by `load_actions`.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.records import ActionTrack

__all__ = ["ActionTrack", "EpisodeRef", "SourceError"]


class SourceError(ValueError):
    """A whole source cannot be read (missing folder, unreadable LeRobot `meta/info.json`).
    Per-episode problems are not raised here: they are yielded as refused refs, or surface
    at decode, and either way are quarantined."""


@dataclass(frozen=True)
class EpisodeRef:
    source: str  # SourceSpec.id
    episode_id: str  # unique within the source and stable across runs
    kind: str  # "robot" | "human"
    uri: str  # the episode's media: a video file, or the HDF5 file holding its images
    content_hash: str  # changes whenever the bytes the episode is read from change
    camera: str | None = None  # camera key the frames come from
    start_s: float = 0.0  # span within the video file (LeRobot v3.0 packs episodes per file)
    end_s: float | None = None  # None = to the end of the file
    fps: float | None = None  # nominal frame rate of the media, when the source says
    instruction: str | None = None
    image_key: str | None = None  # HDF5 dataset of uint8 (N, H, W, 3) images; None = uri is a video
    actions_uri: str | None = None  # where `load_actions` reads actions from (parquet / HDF5)
    actions_selector: str | None = None  # adapter-specific: episode index, HDF5 group, ...
    action_rate: float | None = None  # Hz, when actions carry no timestamps of their own
    split: str | None = None  # dataset split the source assigns ("train", "val", ...), if any
    # Why the episode is bad input, when enumeration already knows (a manifest row leaving the
    # source folder, a missing file, an HDF5 demo without actions): the ingest quarantines it
    # with this one-line reason and never opens its media.
    refused: str | None = None

    @property
    def key(self) -> str:
        """Store-wide unique episode key."""
        return f"{self.source}/{self.episode_id}"
