"""One episode's frames at the corpus rate, in blocks, whatever the episode is made of.

Videos go through `pipeline.decode` (PyAV, or decord with PyAV as fallback; a webdataset
sample's video is decoded in place from its tar, `ref.byte_range`); HDF5 episodes (robomimic /
LIBERO) already hold uint8 image arrays at the control rate, and RLDS episodes one JPEG/PNG
per step: both are picked by timestamp here (only the kept steps are read or decoded) and
resized by `pipeline.decode.arrays` (the swscale path a video's frames take).
`decode_episode_blocks` decodes one episode; `decode_packed` (the body of the Ray decode
task) decodes a list of episodes one after another and packs their frames into shared
blocks, so that many short episodes cost few encoder calls, with the boundaries and the
outcome of each episode alongside.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from pipeline.decode import decode_frames, pick_frame_indices
from pipeline.decode.arrays import resize_frames
from pipeline.errors import classify, one_line
from pipeline.sources import iter_image_frames, load_actions, read_image_timestamps
from pipeline.sources.base import EpisodeError
from schemas.identity import SamplingParams
from schemas.records import EpisodeRef


def decode_episode_blocks(ref: EpisodeRef, params: SamplingParams, *, block_frames: int = 32,
                          decoder: str = "auto") -> Iterator[dict]:
    """Yield {"frames": (n, size, size, 3) uint8, "timestamps": (n,) float64} blocks.
    A refused episode (bad input found at enumeration) is never opened: EpisodeError."""
    if ref.refused is not None:
        raise EpisodeError(ref.refused)
    fps, size, resize, max_seconds = params.fps, params.size, params.resize, params.max_seconds
    if ref.image_key is None:
        for block in decode_frames(ref.uri, fps=fps, size=size, start_s=ref.start_s, end_s=ref.end_s,
                                   resize=resize, max_seconds=max_seconds, block_frames=block_frames,
                                   backend=decoder, byte_range=ref.byte_range):
            yield {"frames": block.frames, "timestamps": block.timestamps}
        return
    stamps = read_image_timestamps(ref)  # shape only: frames are read block by block below
    if not len(stamps):
        return
    end = math.inf if max_seconds is None else float(stamps[0]) + max_seconds
    keep = pick_frame_indices(stamps, fps=fps, start_s=float(stamps[0]), end_s=end)  # same rule as for videos
    for frames, ts in iter_image_frames(ref, keep, block_frames):
        yield {"frames": resize_frames(frames, size, resize), "timestamps": ts.astype(np.float64)}


@dataclass
class PackedBlock:
    """Frames of consecutive episodes of one batch, and what became of them.

    `segments` lists (episode index in the batch, frame count) in frame order: an episode's
    frames are contiguous, may continue in the next block, and its frames in earlier blocks
    come first. `finished` holds (index, actions or None) for episodes whose every frame is in
    this block or an earlier one; `failed` holds (index, one-line reason) for episodes that
    could not be decoded: their frames, here or earlier, must be dropped. Each episode ends
    up in exactly one of the two."""

    frames: np.ndarray  # (n, size, size, 3) uint8
    timestamps: np.ndarray  # (n,) float64, per episode
    segments: list[tuple[int, int]] = field(default_factory=list)
    finished: list[tuple[int, object]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)


def decode_packed(items: list[tuple[EpisodeRef, SamplingParams]], *, block_frames: int = 32, decoder: str = "auto",
                  actions: Callable[[EpisodeRef], object] | None = None) -> Iterator[PackedBlock]:
    """Decode `items` (episode ref, its sampling params: fps, size, resize, max_seconds) in
    order and yield blocks of at most `block_frames` frames packing several episodes (see
    `PackedBlock`); a block may hold no frames, only outcomes. `actions(ref)`, when given, is
    loaded once the episode's frames are all decoded and travels with its outcome.

    Bad input of one episode (a corrupt file, bad actions: `schemas.errors.BadInputError`)
    is that episode's only: it is reported in `failed` and the next episode is decoded. Any
    other failure (the network, a full disk, a bug) is raised: the task fails. Memory: one block and the decoder's
    buffers, whatever the episodes' lengths."""
    frames: list[np.ndarray] = []
    stamps: list[np.ndarray] = []
    pending = PackedBlock(np.empty((0,)), np.empty((0,)))
    n = 0

    def emit() -> PackedBlock:
        nonlocal frames, stamps, pending, n
        out = pending
        if frames:
            out.frames = frames[0] if len(frames) == 1 else np.concatenate(frames)
            out.timestamps = stamps[0] if len(stamps) == 1 else np.concatenate(stamps)
        else:
            out.frames, out.timestamps = np.empty((0,), np.uint8), np.empty((0,), np.float64)
        frames, stamps, pending, n = [], [], PackedBlock(np.empty((0,)), np.empty((0,))), 0
        return out

    for i, (ref, p) in enumerate(items):
        try:
            for block in decode_episode_blocks(ref, p, block_frames=block_frames, decoder=decoder):
                f, t = block["frames"], block["timestamps"]
                while len(f):
                    if n == block_frames:  # full: sent once more frames come, or with the episode's outcome
                        yield emit()
                    take = min(block_frames - n, len(f))
                    frames.append(f[:take])
                    stamps.append(t[:take])
                    segs = pending.segments
                    if segs and segs[-1][0] == i:
                        segs[-1] = (i, segs[-1][1] + take)
                    else:
                        segs.append((i, take))
                    n += take
                    f, t = f[take:], t[take:]
            track = actions(ref) if actions is not None else None
        except Exception as e:
            if classify(e) != "bad_input":  # infrastructure, a full disk or a bug: the task fails, the run stops
                raise
            pending.failed.append((i, one_line(e)))  # bad input of this episode only
        else:
            pending.finished.append((i, track))
        if n == block_frames:
            yield emit()
    if n or pending.finished or pending.failed:
        yield emit()


def decode_task_items(items: list[tuple[EpisodeRef, dict]], block_frames: int, decoder: str) -> Iterator[dict]:
    """The Ray decode task's body (`pipeline.ingest.ray_executor`): `decode_packed` with actions loaded,
    as a flat stream: per packed block its metadata ("n" frames, segments and outcomes: small,
    kept in the driver's memory), then, if n > 0, {"frames", "timestamps"} for an encoder
    actor. Defined here so that a decode worker imports this light module, not the driver's."""
    for b in decode_packed(items, block_frames=block_frames, decoder=decoder, actions=load_actions):
        yield {"n": len(b.frames), "segments": b.segments, "finished": b.finished, "failed": b.failed}
        if len(b.frames):
            yield {"frames": b.frames, "timestamps": b.timestamps}
