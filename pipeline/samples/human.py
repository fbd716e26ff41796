"""An action-free "human" video folder, shaped like egocentric collections arrive.

    human/manifest.csv            columns: file,instruction (file relative to human/)
    human/videos/<task>_<NNN>.mp4 H.264, yuv420p, 20 fps, 4:3 landscape (width = 4/3 x image_size)

The clips are Meta-World scripted episodes of tasks the robot corpus does not hold,
seen from a different camera (`corner3`: high above the table, looking down at the
hands, the nearest Meta-World has to a head-mounted view) and in a different aspect
ratio, so ingest has to resize/crop. Nothing about actions or robot state is written
anywhere in the folder: it carries what a human video source carries, pixels and an
instruction. A seed gives the same clips (the same frames; x264 output is
deterministic for the same build).

The true actions and hand states of the clips are kept *beside* the folder, in
`TRUTH_FILE` next to `human/` (one row per frame: file, frame_index, timestamp, action,
state, speed), never inside it: a source pointed at `human/` cannot ingest them, so no
trainer sees them, while a benchmark can still ask how well latent actions of human clips
predict what the hand did (`read_human_truth`).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.samples.lerobot_v3 import VideoEncoding, encode_video_frames

if TYPE_CHECKING:
    from pipeline.samples.metaworld_robot import Rollout

logger = logging.getLogger(__name__)

HUMAN_CAMERA = "corner3"
H264 = VideoEncoding(vcodec="libx264", pix_fmt="yuv420p", g=None, crf=23)  # ffmpeg's x264 defaults
MANIFEST = "manifest.csv"
TRUTH_FILE = "human_truth.parquet"  # beside human/, never inside it: evaluation only


@dataclass(frozen=True)
class HumanTruth:
    """What the hand of one clip did, one row per frame (frame t = the state before action t)."""

    timestamps: np.ndarray  # (N,) float64 seconds, t / 20
    actions: np.ndarray  # (N, 4) float32 executed actions
    state: np.ndarray  # (N, 4) float32 hand xyz + gripper opening
    speed: float  # the expert's speed scale


def human_width(image_size: int) -> int:
    """4:3 landscape width for a frame `image_size` pixels high, rounded to even (yuv420p)."""
    return 2 * round(image_size * 4 / 3 / 2)


def make_human_corpus(root: Path, *, tasks: Sequence[str], episodes_per_task: int, seed: int,
                      image_size: int, camera: str = HUMAN_CAMERA, min_seconds: float = 0.0,
                      on_episode: Callable[[Rollout], None] | None = None) -> Path:
    """Render `episodes_per_task` clips per task into `root` (a new folder) with their manifest,
    and their true actions into `root.parent / TRUTH_FILE`.

    Clips play at the robot corpus's video rate (20 fps, one frame per control step).
    """
    from pipeline.samples import metaworld_robot  # MuJoCo + Meta-World: the `sim` extra

    rows: list[dict[str, str]] = []
    truth: list[pd.DataFrame] = []

    def write_clip(rollout: Rollout) -> None:
        # Encode as each episode finishes: only one clip's frames are held in memory.
        relative = f"videos/{rollout.task}_{rollout.episode:03d}.mp4"
        encode_video_frames(root / relative, rollout.frames[camera], metaworld_robot.VIDEO_FPS, H264)
        rows.append({"file": relative, "instruction": rollout.instruction})
        n = len(rollout.actions)
        truth.append(pd.DataFrame({
            "file": relative, "frame_index": np.arange(n), "timestamp": np.arange(n) / metaworld_robot.VIDEO_FPS,
            "action": list(rollout.actions), "state": list(metaworld_robot.proprio(rollout.observations)),
            "speed": rollout.speed}))
        rollout.frames.clear()
        if on_episode is not None:
            on_episode(rollout)

    root.mkdir(parents=True, exist_ok=True)
    metaworld_robot.render_rollouts(tasks, episodes_per_task, seed=seed, stream="human", cameras=(camera,),
                                    height=image_size, width=human_width(image_size), min_seconds=min_seconds,
                                    on_episode=write_clip)
    with open(root / MANIFEST, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "instruction"])
        writer.writeheader()
        writer.writerows(rows)
    pd.concat(truth, ignore_index=True).to_parquet(root.parent / TRUTH_FILE, index=False)
    logger.info("wrote %d human clips to %s", len(rows), root)
    return root


def read_human_truth(out_dir: Path) -> dict[str, HumanTruth]:
    """The true actions of the human stand-in under `out_dir` (a `make_samples` folder), by the
    clip's file as the manifest names it (`videos/<task>_<NNN>.mp4`); {} when none were kept."""
    path = Path(out_dir) / TRUTH_FILE
    if not path.exists():
        return {}
    table = pd.read_parquet(path)
    out = {}
    for name, rows in table.groupby("file", sort=False):
        rows = rows.sort_values("frame_index")
        out[str(name)] = HumanTruth(rows["timestamp"].to_numpy(np.float64),
                                    np.stack(rows["action"].to_numpy()).astype(np.float32),
                                    np.stack(rows["state"].to_numpy()).astype(np.float32),
                                    float(rows["speed"].iloc[0]))
    return out
