"""An action-free "human" video folder, shaped like egocentric collections arrive.

    human/manifest.csv            columns: file,instruction (file relative to human/)
    human/videos/<task>_<NNN>.mp4 H.264, yuv420p, 20 fps, 4:3 landscape (width = 4/3 x image_size)

The clips are Meta-World scripted episodes of tasks the robot corpus does not hold,
seen from a different camera (`corner3`: high above the table, looking down at the
hands, the nearest Meta-World has to a head-mounted view) and in a different aspect
ratio, so ingest has to resize/crop. Nothing about actions or robot state is written
anywhere: the folder carries what a human video source carries, pixels and an
instruction. A seed gives the same clips (the same frames; x264 output is
deterministic for the same build).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.samples.lerobot_v3 import VideoEncoding, encode_video_frames

if TYPE_CHECKING:
    from pipeline.samples.metaworld_robot import Rollout

logger = logging.getLogger(__name__)

HUMAN_CAMERA = "corner3"
H264 = VideoEncoding(vcodec="libx264", pix_fmt="yuv420p", g=None, crf=23)  # ffmpeg's x264 defaults
MANIFEST = "manifest.csv"


def human_width(image_size: int) -> int:
    """4:3 landscape width for a frame `image_size` pixels high, rounded to even (yuv420p)."""
    return 2 * round(image_size * 4 / 3 / 2)


def make_human_corpus(root: Path, *, tasks: Sequence[str], episodes_per_task: int, seed: int,
                      image_size: int, camera: str = HUMAN_CAMERA,
                      on_episode: Callable[[Rollout], None] | None = None) -> Path:
    """Render `episodes_per_task` clips per task into `root` (a new folder) with their manifest.

    Clips play at the robot corpus's video rate (20 fps, one frame per control step).
    """
    from pipeline.samples import metaworld_robot  # MuJoCo + Meta-World: the `sim` extra

    rows: list[dict[str, str]] = []

    def write_clip(rollout: Rollout) -> None:
        # Encode as each episode finishes: only one clip's frames are held in memory.
        relative = f"videos/{rollout.task}_{rollout.episode:03d}.mp4"
        encode_video_frames(root / relative, rollout.frames[camera], metaworld_robot.VIDEO_FPS, H264)
        rows.append({"file": relative, "instruction": rollout.instruction})
        rollout.frames.clear()
        if on_episode is not None:
            on_episode(rollout)

    root.mkdir(parents=True, exist_ok=True)
    metaworld_robot.render_rollouts(tasks, episodes_per_task, seed=seed, stream="human", cameras=(camera,),
                                    height=image_size, width=human_width(image_size), on_episode=write_clip)
    with open(root / MANIFEST, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "instruction"])
        writer.writeheader()
        writer.writerows(rows)
    logger.info("wrote %d human clips to %s", len(rows), root)
    return root
