"""The local executor of an ingest: decode and encode in this process, one batch after another.

    ingest_corpus(cfg, executor="local")        # a notebook, a test: no Ray started

The same step as on Ray (`pipeline.ingest.assembler`), fed by the same packed decode
(`pipeline.ingest.frames.decode_packed`, actions loaded with the episode) and the same frozen
encoder: the features are those a Ray ingest stores. Slower on a many-core machine (decode and
encode take turns), and without Ray's start-up (seconds): the better choice for a few episodes.
"""

from __future__ import annotations

import logging

from pipeline.ingest.assembler import EpisodeAssembler, RunStats
from pipeline.ingest.frames import decode_packed
from pipeline.sources import load_actions
from schemas import EncoderConfig
from schemas.records import EpisodeRef

log = logging.getLogger(__name__)

BATCH_EPISODES = 32  # episodes per decode batch: what a Ray decode task packs at most


class LocalExecutor:
    """Runs the ingest step in this process with a `FrozenEncoder` built here."""

    def __init__(self, encoder: EncoderConfig, block_frames: int, decoder: str):
        self.cfg, self.block_frames, self.decoder = encoder, block_frames, decoder

    def run(self, assembler: EpisodeAssembler, todo: list[EpisodeRef]) -> RunStats:
        """Ingest `todo` and commit; on any failure, commit the episodes already complete and raise."""
        from pipeline.encode import FrozenEncoder

        try:
            encoder = FrozenEncoder(self.cfg)
            for i in range(0, len(todo), BATCH_EPISODES):
                episodes = assembler.begin(todo[i : i + BATCH_EPISODES])
                items = [(ep.ref, ep.params) for ep in episodes]
                for block in decode_packed(items, block_frames=self.block_frames, decoder=self.decoder,
                                           actions=load_actions):
                    meta = {"segments": block.segments, "finished": block.finished, "failed": block.failed}
                    if len(block.frames):
                        try:
                            feats = encoder.encode(block.frames)
                        except Exception as e:  # the assembler decides: bad input fails the block's episodes
                            assembler.frames_refused(episodes, meta, e)
                        else:
                            assembler.frames(episodes, meta, feats, block.timestamps)
                    assembler.outcomes(episodes, meta)
                assembler.end(episodes)
            return assembler.complete()
        except BaseException as failure:
            assembler.abort(failure)
            raise
