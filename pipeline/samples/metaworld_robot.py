"""Meta-World scripted-expert episodes, rendered upright, written as a LeRobot v3.0 robot corpus.

Clocks. One row per video frame, as LeRobot's own `LeRobotDataset` requires: control
and video both run at 20 Hz (`info.json` `fps: 20`, every video's `video.fps: 20`). The
expert is queried once per control step and its action is held for `ACTION_REPEAT` = 4
Meta-World steps of 1/80 s (see `metaworld_env`). Row t holds the observation before
action t, action t, and the reward and success after it (success if any of the 4
Meta-World steps reported it); frame t shows the state of row t, before its action;
`timestamp = t / 20`.

Episodes. The expert runs until the task succeeds, then `SUCCESS_TAIL_STEPS` more
control steps (the settled outcome is part of the clip), or until `MAX_STEPS`; the
per-row `next.success` column and the per-episode `success` column record the
outcome. At full speed the default experts finish in 0.5-1.5 s; `min_seconds` slows an
episode's expert (its xyz moves scaled by the fastest of `SPEEDS` whose unrendered
rehearsal still succeeds and lasts that long, the gripper untouched) so that clips last
long enough for pairs a second apart. The stored action is the one executed (scaled).
Episode e of a task is reset to `layouts(task, ...)[e]` (MT1 seeded from the corpus seed,
the stream and the task), so a seed gives the same rows and frames.

What made the data is recorded in the dataset itself: `meta/lawam_samples.json` holds
the generator's arguments (seed, stream, cameras, image_size, control_hz,
action_repeat, format version) and each episode's layout (task, mt1_seed, slot,
rand_vec), which `read_sample_layouts` reads back for an evaluation that resets
`TaskEnv` to the corpus's layouts; meta/episodes also carries `mt1_seed` and
`layout_slot` per episode (LeRobot keeps extra columns).

Columns of data/chunk-000/file-000.parquet:
    action                       float32 (4,)  [delta_x, delta_y, delta_z, gripper_effort] in [-1, 1]
    observation.state            float32 (4,)  hand position (m) and gripper opening: `proprio(obs)`
    observation.environment_state float32 (39,) the full Meta-World observation (objects, goal, ...)
    next.reward                  float32       reward after the action
    next.success                 bool          task solved after the action
    next.done                    bool          last row of the episode
    timestamp, frame_index, episode_index, index, task_index  (lerobot's defaults)
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.samples import LAYOUTS_FILE
from pipeline.samples.lerobot_v3 import LeRobotEpisode, write_lerobot_v3
from pipeline.samples.metaworld_env import (
    ACTION_REPEAT,
    CONTROL_HZ,
    VIDEO_FPS,
    Layout,
    TaskEnv,
    TaskEnvError,
    layouts,
    proprio,
    stream_seed,
    upright_turns,
)
from pipeline.samples.tasks import TASK_INSTRUCTIONS

try:
    from metaworld.policies import ENV_POLICY_MAP
except ModuleNotFoundError as exc:  # the `sim` extra
    raise ModuleNotFoundError(
        f"rendering sample corpora needs {exc.name!r}: pip install 'lawam[sim]' (metaworld, mujoco)"
    ) from exc

__all__ = [
    "ACTION_REPEAT",
    "CONTROL_HZ",
    "LAYOUTS_FILE",
    "VIDEO_FPS",
    "Layout",
    "Rollout",
    "ScriptedTask",
    "TaskEnv",
    "TaskEnvError",
    "layouts",
    "make_robot_corpus",
    "proprio",
    "read_sample_layouts",
    "render_rollouts",
    "stream_seed",
    "upright_turns",
]

logger = logging.getLogger(__name__)

SUCCESS_TAIL_STEPS = 4  # control steps kept after the first success (0.2 s of the settled outcome)
MAX_STEPS = 60  # cap (3 s) at full speed, / speed when slowed; the default experts first succeed after 8-37 steps
# Expert speeds tried, fastest first, when clips must last `min_seconds`: a scripted expert is a
# closed-loop controller, so scaling its xyz moves slows it down without changing where it goes
# (below ~0.3 push-v3 and door-open-v3 stop succeeding; the ladder then keeps a faster speed).
SPEEDS = (1.0, 0.8, 0.65, 0.5, 0.4, 0.33, 0.25)
ROBOT_TYPE = "sawyer"

STATE_NAMES = ["hand_x", "hand_y", "hand_z", "gripper_opening"]
ACTION_NAMES = ["delta_x", "delta_y", "delta_z", "gripper_effort"]
FEATURE_NAMES = {
    "action": ACTION_NAMES,
    "observation.state": STATE_NAMES,
    "observation.environment_state": [f"obs_{i}" for i in range(39)],
}


@dataclass
class Rollout:
    """One scripted episode: N control steps, N frames per camera."""

    layout: Layout
    episode: int  # index of the episode within its task
    success: bool  # the task was solved at some step
    speed: float  # scale of the expert's xyz moves (1.0 = as shipped)
    actions: np.ndarray  # (N, 4) float32
    observations: np.ndarray  # (N, 39) float32, observation before each action
    rewards: np.ndarray  # (N,) float32, reward after each action
    successes: np.ndarray  # (N,) bool, success after each action
    frames: dict[str, np.ndarray]  # camera -> (N, H, W, 3) uint8; frame t = state before action t

    @property
    def task(self) -> str:
        return self.layout.task

    @property
    def instruction(self) -> str:
        return TASK_INSTRUCTIONS[self.task]


class ScriptedTask:
    """One task's `TaskEnv` driven by Meta-World's scripted expert, reused across episodes."""

    def __init__(self, task: str, *, seed: int, stream: str, cameras: Sequence[str],
                 height: int, width: int) -> None:
        self.task, self.seed, self.stream = task, seed, stream
        self.cameras = tuple(cameras)
        self.env = TaskEnv(task, camera=self.cameras[0], image_size=height, width=width,
                           extra_cameras=self.cameras[1:])
        self.policy = ENV_POLICY_MAP[task]()

    def __enter__(self) -> ScriptedTask:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.env.close()

    def plan_speed(self, layout: Layout, min_steps: int) -> float:
        """The fastest of `SPEEDS` whose rollout from `layout` succeeds and lasts >= `min_steps`
        control steps, rehearsed without rendering (~200 control steps/s); failing that the
        slowest that succeeds, and 1.0 when none does."""
        if min_steps <= 0:
            return 1.0
        succeeded = []
        for speed in SPEEDS:
            steps, success = self._run(layout, speed, render=False)[:2]
            if success:
                if steps >= min_steps:
                    return speed
                succeeded.append(speed)
        return succeeded[-1] if succeeded else 1.0

    def rollout(self, episode: int, layout: Layout | None = None, *, min_steps: int = 0) -> Rollout:
        """Run the expert from `layout` (default: this corpus's layout of `episode`), one frame per
        step, slowed (`plan_speed`) so that the episode lasts at least `min_steps` when it can."""
        if layout is None:
            layout = layouts(self.task, seed=self.seed, stream=self.stream, count=episode + 1)[episode]
        speed = self.plan_speed(layout, min_steps)
        _, success, rows, frames = self._run(layout, speed, render=True)
        observations, actions, rewards, successes = rows
        if not success:
            logger.warning("%s episode %d: the scripted expert did not succeed in %d control steps",
                           self.task, episode, len(actions))
        return Rollout(
            layout=layout,
            episode=episode,
            success=success,
            speed=speed,
            actions=np.stack(actions),
            observations=np.stack(observations),
            rewards=np.asarray(rewards, dtype=np.float32),
            successes=np.asarray(successes, dtype=bool),
            frames={camera: np.stack(images) for camera, images in frames.items()},
        )

    def _run(self, layout: Layout, speed: float, *, render: bool) -> tuple[int, bool, tuple, dict]:
        """One expert episode: (control steps, success, (observations, actions, rewards, successes), frames)."""
        obs = self.env.reset(layout)
        observations, actions, rewards, successes = [], [], [], []
        frames: dict[str, list[np.ndarray]] = {camera: [] for camera in self.cameras}
        stop_at = min(int(np.ceil(MAX_STEPS / speed)), self.env.max_steps)
        while len(actions) < stop_at:
            if render:
                for camera in self.cameras:  # the state this row's action is taken from
                    frames[camera].append(self.env.render(camera))
            with warnings.catch_warnings():  # experts warn when their gain saturates the action
                warnings.simplefilter("ignore", UserWarning)
                # Experts may ask for more than the action space; store what the env executes.
                action = np.clip(self.policy.get_action(obs), -1.0, 1.0).astype(np.float32)
            action[:3] *= speed  # slower moves; the gripper's effort is left as it is
            observations.append(obs.astype(np.float32))
            obs, success = self.env.step(action)
            actions.append(action)
            rewards.append(self.env.last_reward)
            successes.append(success)
            if success and not any(successes[:-1]):  # first success: record the tail, then stop
                stop_at = min(stop_at, len(actions) + SUCCESS_TAIL_STEPS)
        return len(actions), any(successes), (observations, actions, rewards, successes), frames


def render_rollouts(tasks: Sequence[str], episodes_per_task: int, *, seed: int, stream: str,
                    cameras: Sequence[str], height: int, width: int, min_seconds: float = 0.0,
                    on_episode: Callable[[Rollout], None] | None = None) -> list[Rollout]:
    """Episodes 0..episodes_per_task-1 of every task, in task order, each lasting at least
    `min_seconds` where a slowed expert still succeeds (see `ScriptedTask.plan_speed`)."""
    rollouts = []
    min_steps = int(np.ceil(min_seconds * CONTROL_HZ))
    for task in tasks:
        task_layouts = layouts(task, seed=seed, stream=stream, count=episodes_per_task)
        with ScriptedTask(task, seed=seed, stream=stream, cameras=cameras, height=height, width=width) as runner:
            for episode, layout in enumerate(task_layouts):
                rollouts.append(runner.rollout(episode, layout, min_steps=min_steps))
                if on_episode is not None:
                    on_episode(rollouts[-1])
    return rollouts


def to_lerobot_episode(rollout: Rollout) -> LeRobotEpisode:
    """A rollout as LeRobot rows and `observation.images.<camera>` videos, one row per frame."""
    done = np.zeros(len(rollout.actions), dtype=bool)
    done[-1] = True
    return LeRobotEpisode(
        task=rollout.instruction,
        data={
            "action": rollout.actions,
            "observation.state": proprio(rollout.observations),
            "observation.environment_state": rollout.observations,
            "next.reward": rollout.rewards,
            "next.success": rollout.successes,
            "next.done": done,
        },
        videos={f"observation.images.{camera}": frames for camera, frames in rollout.frames.items()},
        metadata={"success": rollout.success, "mt1_seed": rollout.layout.mt1_seed,
                  "layout_slot": rollout.layout.slot},
    )


def make_robot_corpus(root: Path, *, tasks: Sequence[str], episodes_per_task: int, seed: int,
                      image_size: int, cameras: Sequence[str], min_seconds: float = 0.0,
                      record: Mapping[str, Any] | None = None,
                      on_episode: Callable[[Rollout], None] | None = None) -> Path:
    """Render the robot corpus and write it as a LeRobot v3.0 dataset at `root` (a new folder).

    `record` adds entries (e.g. the format version) to the generator arguments written
    to `meta/lawam_samples.json`.
    """
    rollouts = render_rollouts(tasks, episodes_per_task, seed=seed, stream="robot", cameras=cameras,
                               height=image_size, width=image_size, min_seconds=min_seconds, on_episode=on_episode)
    write_lerobot_v3(root, [to_lerobot_episode(r) for r in rollouts], fps=CONTROL_HZ, video_fps=VIDEO_FPS,
                     robot_type=ROBOT_TYPE, names=FEATURE_NAMES)
    generator = {**(record or {}), "seed": seed, "stream": "robot", "cameras": list(cameras),
                 "image_size": image_size, "control_hz": CONTROL_HZ, "action_repeat": ACTION_REPEAT,
                 "tasks": list(tasks), "episodes_per_task": episodes_per_task, "min_seconds": min_seconds}
    episodes = [{"episode_index": i, **asdict(r.layout), "length": len(r.actions), "success": r.success,
                 "speed": r.speed}
                for i, r in enumerate(rollouts)]
    (root / LAYOUTS_FILE).write_text(json.dumps({"generator": generator, "episodes": episodes}, indent=2))
    return root


def read_sample_layouts(dataset_root: Path) -> list[Layout]:
    """The layouts of a robot corpus's episodes, in episode order; [] if it records none."""
    path = Path(dataset_root) / LAYOUTS_FILE
    if not path.exists():
        return []
    episodes = sorted(json.loads(path.read_text())["episodes"], key=lambda e: e["episode_index"])
    return [Layout(task=e["task"], mt1_seed=int(e["mt1_seed"]), slot=int(e["slot"]),
                   rand_vec=tuple(float(v) for v in e["rand_vec"])) for e in episodes]
