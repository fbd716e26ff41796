"""Small feature stores written through the real writer, with features that carry motion.

Each robot episode is a hidden 2-d hand position moving under its actions (a random walk at
the control rate); a frame's features are a fixed random linear map of the position at that
frame's time, so the change between two frames is exactly what a latent action must carry.
Frame i of an episode also holds (episode number, i) in token 0, dims 0-1, so a test reads
back *which* frame came out. Human episodes move the same way, without actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.store import StoreWriter
from schemas.identity import EncoderIdentity, SamplingParams, random_init_weights
from schemas.records import ActionTrack, EpisodeRef


def fake_encoder(model: str = "synthetic", seed: int = 0, tokens: str = "grid:2x2", layer: int = -1) -> EncoderIdentity:
    """The identity of an encoder that never runs: stores written by hand in tests name one."""
    return EncoderIdentity(model=model, weights=random_init_weights(seed), image_size=32, mean=(0.5, 0.5, 0.5),
                           std=(0.5, 0.5, 0.5), tokens=tokens, layer=layer)


ENCODER = fake_encoder()
TOKENS, DIM = 4, 16
CONTROL_HZ = 20.0


@dataclass(frozen=True)
class SynthSource:
    id: str
    kind: str = "robot"
    fps: float = 5.0
    episodes: int = 4
    seconds: float = 4.0
    split: str | None = None


def _projection() -> np.ndarray:
    return np.random.default_rng(1234).normal(size=(2, TOKENS * DIM)).astype(np.float32)


def episode_data(source: SynthSource, i: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, ActionTrack]:
    """(features (N, T, D) float16, frame timestamps (N,), control-rate ActionTrack)."""
    rng = np.random.default_rng([seed, i, sum(map(ord, source.id))])
    m = int(source.seconds * CONTROL_HZ)
    actions = rng.normal(scale=0.05, size=(m, 2)).astype(np.float32)
    pos = np.cumsum(np.concatenate([np.zeros((1, 2), np.float32), actions[:-1]]), 0)
    at = np.arange(m) / CONTROL_HZ
    n = int(source.seconds * source.fps)
    ts = np.arange(n) / source.fps
    p = pos[np.minimum(np.rint(ts * CONTROL_HZ).astype(int), m - 1)]
    f = (p @ _projection()).reshape(n, TOKENS, DIM) + rng.normal(scale=0.01, size=(n, TOKENS, DIM))
    f[:, 0, 0], f[:, 0, 1] = i, np.arange(n)  # which episode, which frame
    state = np.concatenate([pos, np.ones((m, 1), np.float32)], 1)  # xy + a gripper that never moves
    return f.astype(np.float16), ts, ActionTrack(at, actions, state.astype(np.float32))


def write_store(uri: str, sources: list[SynthSource], *, seed: int = 0, chunk_frames: int = 16,
                content: str = "v1", only: set[str] | None = None, encoder: EncoderIdentity | None = None) -> str:
    """Ingest the synthetic episodes of `sources` into `uri` (one commit); returns the version.
    `content` changes every episode's content hash (as a re-encoded video would); `only`
    restricts the episodes written to these keys."""
    with StoreWriter.open(uri, encoder=encoder or ENCODER, chunk_frames=chunk_frames) as w:
        for src in sources:
            for i in range(src.episodes):
                ref = EpisodeRef(source=src.id, episode_id=f"ep{i:03d}", kind=src.kind, uri=f"/synth/{src.id}/{i}",
                                 content_hash=f"{content}-{src.id}-{i}", instruction=f"task {i % 2}",
                                 split=src.split)
                if only is not None and ref.key not in only:
                    continue
                f, ts, track = episode_data(src, i, seed)
                w.start_episode(ref, SamplingParams(fps=src.fps, size=32))
                w.append_frames(ref, f, ts)
                w.finish_episode(ref, track if src.kind == "robot" else None, fps=src.fps)
        return w.commit("synthetic episodes")


def chunk_files(uri: str | Path) -> list[Path]:
    """A local store's chunk files, sorted (none before its first write): they grow as a run
    writes episode data, before it commits."""
    chunks = Path(uri) / "repo" / "chunks"
    return sorted(chunks.iterdir()) if chunks.exists() else []
