"""Records that cross room boundaries: what the store hands to trainers and adapters.

Plain, picklable dataclasses over numpy arrays: a trainer that reads the store imports
these without loading any source adapter (h5py, LeRobot parsing) or torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class ActionTrack:
    """Robot actions at the control rate, on the same clock as the episode's frames."""

    timestamps: np.ndarray  # (M,) float64 seconds from the episode start
    actions: np.ndarray  # (M, A) float32
    state: np.ndarray | None = None  # (M, S) float32 proprioception, when the source has it

    def __post_init__(self) -> None:
        if len(self.timestamps) != len(self.actions):
            raise ValueError(
                f"{len(self.timestamps)} action timestamps for {len(self.actions)} action rows"
            )

    @cached_property
    def rate(self) -> float:
        """Control rate in Hz (median step), 0 when the track has fewer than two rows.
        Cached: trainers ask for it on every batch that reads the episode."""
        if len(self.timestamps) < 2:
            return 0.0
        return float(1.0 / np.median(np.diff(self.timestamps)))
