"""Meta-World scripted-expert episodes, rendered upright, written as a LeRobot v3.0 robot corpus.

Clocks. Meta-World steps its controller at 80 Hz (frame_skip 5 x timestep 0.0025 s;
checked against `env.dt` when an environment is built). Data rows are at that
control rate: row t holds the observation before action t, action t, and the reward
and success after it; `timestamp = t / 80`. Video is at 20 fps: one frame every 4th
step, frame j showing the state of row 4j, so frame and row times coincide at
multiples of 0.05 s. Episodes are cut to a multiple of 4 rows, so an episode's video
lasts exactly as long as its rows (`length / 80` s). Real LeRobot data usually has one
row per frame; our ingest aligns frames and actions by timestamp either way.

Episodes. The expert runs until the task succeeds, then `SUCCESS_TAIL_STEPS` more
steps (the settled outcome is part of the clip), or until `MAX_STEPS`; the per-row
`next.success` column and the per-episode `success` column record the outcome.
Every episode draws its goal/object layout from Meta-World's MT1 task list seeded
from (corpus seed, stream, task), so a seed gives the same rows and the same frames.

Columns of data/chunk-000/file-000.parquet:
    action                       float32 (4,)  [delta_x, delta_y, delta_z, gripper_effort] in [-1, 1]
    observation.state            float32 (4,)  hand position (m) and gripper opening: obs[0:4]
    observation.environment_state float32 (39,) the full Meta-World observation (objects, goal, ...)
    next.reward                  float32       reward after the action
    next.success                 bool          task solved after the action
    next.done                    bool          last row of the episode
    timestamp, frame_index, episode_index, index, task_index  (lerobot's defaults)

Orientation. Meta-World's fixed cameras (`corner`, `corner2..4`) have their image
"up" axis pointing down in the world (`corner`: xyaxes="-1 1 0 -0.2 -0.2 -1"), so a
raw MuJoCo render shows the table upside down. `upright_turns` reads the camera's
pose and returns the quarter turns that bring world-up to image-up; frames are
rotated (never mirrored) by it.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# MuJoCo binds its GL backend at import: default to offscreen EGL so that a headless
# machine or a notebook renders without a display (an exported MUJOCO_GL wins).
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
try:
    import metaworld
    import mujoco
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    from metaworld.policies import ENV_POLICY_MAP
except ModuleNotFoundError as exc:  # the `sim` extra
    raise ModuleNotFoundError(
        f"rendering sample corpora needs {exc.name!r}: pip install 'lawam[sim]' (metaworld, mujoco)"
    ) from exc

from pipeline.samples.lerobot_v3 import LeRobotEpisode, write_lerobot_v3
from pipeline.samples.tasks import TASK_INSTRUCTIONS

logger = logging.getLogger(__name__)

CONTROL_HZ = 80  # Meta-World control rate: frame_skip 5 x 0.0025 s
FRAME_STRIDE = 4  # one video frame every 4th control step ...
VIDEO_FPS = CONTROL_HZ // FRAME_STRIDE  # ... so video runs at 20 fps
SUCCESS_TAIL_STEPS = 16  # steps kept after first success (0.2 s, 4 frames of the settled outcome)
MAX_STEPS = 200  # cap (2.5 s); the default experts succeed in 45-95 steps
GOALS_PER_BLOCK = 50  # MT1 draws 50 goal layouts per seed; episode e uses block e // 50
ROBOT_TYPE = "sawyer"
# Shadows and reflections off: 3-4x faster offscreen rendering on CPU (Mesa llvmpipe,
# ~90 vs ~22 frames/s at 128 px), at the cost of the arm's shadow on the table.
FAST_RENDER = True

STATE_NAMES = ["hand_x", "hand_y", "hand_z", "gripper_opening"]
ACTION_NAMES = ["delta_x", "delta_y", "delta_z", "gripper_effort"]
FEATURE_NAMES = {
    "action": ACTION_NAMES,
    "observation.state": STATE_NAMES,
    "observation.environment_state": [f"obs_{i}" for i in range(39)],
}


@dataclass
class Rollout:
    """One scripted episode: N control steps, N / FRAME_STRIDE frames per camera."""

    task: str
    episode: int  # index of the episode within its task
    success: bool  # the task was solved at some step
    actions: np.ndarray  # (N, 4) float32
    observations: np.ndarray  # (N, 39) float32, observation before each action
    rewards: np.ndarray  # (N,) float32, reward after each action
    successes: np.ndarray  # (N,) bool, success after each action
    frames: dict[str, np.ndarray]  # camera -> (N // FRAME_STRIDE, H, W, 3) uint8; frame j = state of row 4j

    @property
    def instruction(self) -> str:
        return TASK_INSTRUCTIONS[self.task]


def stream_seed(seed: int, stream: str, task: str, block: int = 0) -> int:
    """Seed of one (corpus seed, stream, task, goal block): stable across runs and machines.

    `stream` ("robot", "human") keeps the two corpora from replaying the same layouts
    when they share a task; crc32 rather than `hash()`, which is salted per process.
    """
    return zlib.crc32(f"{seed}:{stream}:{task}:{block}".encode())


@functools.lru_cache(maxsize=32)
def _goal_layouts(task: str, seed: int) -> tuple:
    """Meta-World's 50 seeded goal/object layouts (`Task`s) of an MT1 benchmark."""
    return tuple(metaworld.MT1(task, seed=seed).train_tasks)


def upright_turns(model: mujoco.MjModel, data: mujoco.MjData, camera: str) -> int:
    """Quarter turns (for `np.rot90`) that put world-up at image-up for `camera`.

    MuJoCo renders with image-up along the camera's y axis; world +z expressed in the
    camera frame gives the angle by which that up is off. A camera looking straight
    down (`topview`) has no defined up and is left as rendered.
    """
    camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    rotation = data.cam_xmat[camera_id].reshape(3, 3)  # columns: camera x, y, z axes in world
    up_x, up_y, _ = rotation.T @ np.array([0.0, 0.0, 1.0])
    if np.hypot(up_x, up_y) < 0.3:
        return 0
    angle = np.degrees(np.arctan2(up_y, up_x))  # where world-up points in the image plane
    return int(round((90.0 - angle) / 90.0)) % 4  # rot90 turns counter-clockwise


class ScriptedTask:
    """One Meta-World task, its scripted expert and an offscreen renderer, reused across episodes.

    Building the environment and the EGL renderer costs ~0.5 s, so a task's episodes share
    them; `close()` (or the `with` block) frees the GL context.
    """

    def __init__(self, task: str, *, seed: int, stream: str, cameras: Sequence[str],
                 height: int, width: int) -> None:
        self.task, self.seed, self.stream, self.cameras = task, seed, stream, tuple(cameras)
        self.env = ALL_V3_ENVIRONMENTS[task]()
        self.env.set_task(_goal_layouts(task, stream_seed(seed, stream, task))[0])
        if round(1.0 / self.env.dt) != CONTROL_HZ:
            raise RuntimeError(f"{task}: control rate is {1.0 / self.env.dt:.3f} Hz, this module assumes "
                               f"{CONTROL_HZ} Hz (frame_skip x timestep changed in this Meta-World)")
        self.policy = ENV_POLICY_MAP[task]()
        visual = self.env.model.vis.global_
        visual.offwidth, visual.offheight = max(visual.offwidth, width), max(visual.offheight, height)
        self.renderer = mujoco.Renderer(self.env.model, height=height, width=width)
        if FAST_RENDER:
            self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False

    def __enter__(self) -> ScriptedTask:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.renderer.close()
        self.env.close()

    def render(self, camera: str, turns: int) -> np.ndarray:
        """The current state seen from `camera`, upright: (H, W, 3) uint8."""
        self.renderer.update_scene(self.env.data, camera=camera)
        return np.ascontiguousarray(np.rot90(self.renderer.render(), turns))

    def rollout(self, episode: int) -> Rollout:
        """Run the expert on goal layout `episode` and render every FRAME_STRIDE-th state."""
        block, slot = divmod(episode, GOALS_PER_BLOCK)
        layouts = _goal_layouts(self.task, stream_seed(self.seed, self.stream, self.task, block))
        self.env.set_task(layouts[slot])
        obs, _ = self.env.reset()
        turns = {camera: upright_turns(self.env.model, self.env.data, camera) for camera in self.cameras}
        observations, actions, rewards, successes = [], [], [], []
        frames: dict[str, list[np.ndarray]] = {camera: [] for camera in self.cameras}
        stop_at, step = MAX_STEPS, 0
        while step < stop_at:
            if step % FRAME_STRIDE == 0:
                for camera in self.cameras:
                    frames[camera].append(self.render(camera, turns[camera]))
            with warnings.catch_warnings():  # experts warn when their gain saturates the action
                warnings.simplefilter("ignore", UserWarning)
                # Experts may ask for more than the action space; store what the env executes.
                action = np.clip(self.policy.get_action(obs), -1.0, 1.0).astype(np.float32)
            observations.append(obs.astype(np.float32))
            obs, reward, _, _, info = self.env.step(action)
            actions.append(action)
            rewards.append(float(reward))
            successes.append(bool(info["success"]))
            step += 1
            if successes[-1] and stop_at == MAX_STEPS:  # first success: record the tail, then stop
                stop_at = min(MAX_STEPS, _round_up(step + SUCCESS_TAIL_STEPS, FRAME_STRIDE))
        if not any(successes):
            logger.warning("%s episode %d: the scripted expert did not succeed in %d steps",
                           self.task, episode, MAX_STEPS)
        return Rollout(
            task=self.task,
            episode=episode,
            success=any(successes),
            actions=np.stack(actions),
            observations=np.stack(observations),
            rewards=np.asarray(rewards, dtype=np.float32),
            successes=np.asarray(successes, dtype=bool),
            frames={camera: np.stack(images) for camera, images in frames.items()},
        )


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def render_rollouts(tasks: Sequence[str], episodes_per_task: int, *, seed: int, stream: str,
                    cameras: Sequence[str], height: int, width: int,
                    on_episode: Callable[[Rollout], None] | None = None) -> list[Rollout]:
    """Episodes 0..episodes_per_task-1 of every task, in task order."""
    rollouts = []
    for task in tasks:
        with ScriptedTask(task, seed=seed, stream=stream, cameras=cameras, height=height, width=width) as runner:
            for episode in range(episodes_per_task):
                rollouts.append(runner.rollout(episode))
                if on_episode is not None:
                    on_episode(rollouts[-1])
    return rollouts


def to_lerobot_episode(rollout: Rollout) -> LeRobotEpisode:
    """A rollout as LeRobot rows (control rate) and `observation.images.<camera>` videos (20 fps)."""
    done = np.zeros(len(rollout.actions), dtype=bool)
    done[-1] = True
    return LeRobotEpisode(
        task=rollout.instruction,
        data={
            "action": rollout.actions,
            "observation.state": rollout.observations[:, :4],
            "observation.environment_state": rollout.observations,
            "next.reward": rollout.rewards,
            "next.success": rollout.successes,
            "next.done": done,
        },
        videos={f"observation.images.{camera}": frames for camera, frames in rollout.frames.items()},
        metadata={"success": rollout.success},
    )


def make_robot_corpus(root: Path, *, tasks: Sequence[str], episodes_per_task: int, seed: int,
                      image_size: int, cameras: Sequence[str],
                      on_episode: Callable[[Rollout], None] | None = None) -> Path:
    """Render the robot corpus and write it as a LeRobot v3.0 dataset at `root` (a new folder)."""
    rollouts = render_rollouts(tasks, episodes_per_task, seed=seed, stream="robot", cameras=cameras,
                               height=image_size, width=image_size, on_episode=on_episode)
    write_lerobot_v3(root, [to_lerobot_episode(r) for r in rollouts], fps=CONTROL_HZ, video_fps=VIDEO_FPS,
                     robot_type=ROBOT_TYPE, names=FEATURE_NAMES)
    return root
