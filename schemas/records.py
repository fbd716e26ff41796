"""Records that cross room boundaries: what adapters hand to the store, what the store hands
to trainers.

Plain, picklable dataclasses over numpy arrays: a trainer or the store imports these without
loading any source adapter (h5py, LeRobot parsing) or torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import numpy as np

from schemas.errors import BadInputError


@dataclass(frozen=True)
class ActionTrack:
    """Robot actions at the control rate, on the same clock as the episode's frames."""

    timestamps: np.ndarray  # (M,) float64 seconds from the episode start
    actions: np.ndarray  # (M, A) float32
    state: np.ndarray | None = None  # (M, S) float32 proprioception, when the source has it
    names: tuple[str, ...] | None = None  # one per action column, when the source names them
    state_names: tuple[str, ...] | None = None  # one per state column, likewise

    def __post_init__(self) -> None:
        if len(self.timestamps) != len(self.actions):
            raise BadInputError(
                f"{len(self.timestamps)} action timestamps for {len(self.actions)} action rows"
            )

    @cached_property
    def rate(self) -> float:
        """Control rate in Hz (median step), 0 when the track has fewer than two rows.
        Cached: trainers ask for it on every batch that reads the episode."""
        if len(self.timestamps) < 2:
            return 0.0
        return float(1.0 / np.median(np.diff(self.timestamps)))


@dataclass(frozen=True)
class EpisodeRef:
    """One episode of a source, as enumerated: where its media and actions are, no pixels."""

    source: str  # SourceSpec.id
    episode_id: str  # unique within the source and stable across runs
    kind: str  # "robot" | "human"
    uri: str  # the episode's media: a video file, or the file holding its images (HDF5, a TFRecord shard, a tar)
    content_hash: str  # changes whenever the bytes the episode is read from change
    camera: str | None = None  # camera key the frames come from
    start_s: float = 0.0  # span within the video file (LeRobot v3.0 packs episodes per file)
    end_s: float | None = None  # None = to the end of the file
    fps: float | None = None  # nominal frame rate of the media, when the source says
    instruction: str | None = None
    # Where the images are when they are not a video: the HDF5 dataset of uint8 (N, H, W, 3) arrays, or
    # the RLDS feature holding one encoded image per step; None = the media is a video
    image_key: str | None = None
    # (offset, length) in bytes of the episode within `uri` when it is one part of a bigger file: a
    # webdataset sample's video member inside its tar shard, an RLDS episode's record inside its
    # TFRecord shard. Read in place: never extracted to disk. None = the whole file.
    byte_range: tuple[int, int] | None = None
    format: str | None = None  # SourceSpec.format of the adapter that made it (None: video, or HDF5 arrays)
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


@dataclass(frozen=True)
class IndexRow:
    """One row of the store's episode index (`schemas.tables.INDEX_SCHEMA`, column for column):
    an ingested episode (`status` "ok", where its rows live) or a quarantined one (`reason`,
    since when and how often it failed). The writer builds these instead of spelling columns."""

    source: str
    episode_id: str
    kind: str
    uri: str
    content_hash: str  # the ingest hash: the episode's bytes + how it was sampled
    status: str
    reason: str | None = None
    failed_since: datetime | None = None
    failures: int = 0
    instruction: str | None = None
    frames: int = 0
    duration_s: float = 0.0
    actions: int = 0
    shard: str | None = None
    frame_start: int = 0
    action_start: int = 0
    ingested_at: datetime | None = None
    split: str | None = None
    key_hash: int = 0  # of `source/episode_id` (pipeline.store.index.key_hash)

    def as_dict(self) -> dict:
        """The row as `pa.Table.from_pylist(..., schema=INDEX_SCHEMA)` takes it."""
        return dict(self.__dict__)  # its fields are flat: what asdict returns, without its recursion
