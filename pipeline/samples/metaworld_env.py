"""One Meta-World task as a closed-loop environment at the video rate, shared by the corpus and the evaluation.

Promise. An evaluation that resets `TaskEnv` to a recorded `Layout` sees the scene the
corpus recorded for that episode: the same 39-dim observation and, rendered with the
same camera and size, the same pixels as the episode's first corpus frame (before
video compression). Actions act on the simulator exactly as the corpus's actions did.
Both follow from one code path: the sample generator drives its scripted experts
through this class, and an evaluation drives a policy through it.

Clocks. Meta-World steps its controller at 80 Hz (frame_skip 5 x timestep 0.0025 s,
checked against `env.dt` when an environment is built). `TaskEnv.step` holds one action
for `ACTION_REPEAT` = 4 of those steps, so control runs at `CONTROL_HZ` = 20 Hz, the
video rate: one control step, one frame, one LeRobot row. Holding the action (rather
than raising Meta-World's `frame_skip`) keeps the simulation itself unchanged; the
scripted experts solve the default tasks either way, while a larger frame_skip broke
push-v3. Meta-World truncates an episode after 500 of its steps, so `TaskEnv.max_steps`
is 125 control steps and stepping past it is an error, not a silent reset.

Layouts. A `Layout` is one randomised object/goal placement of a task: Meta-World's MT1
benchmark seeded with `mt1_seed` draws 50 of them (`slot` 0..49), each a `rand_vec`.
`layouts(task, seed=, stream=, count=)` names the ones a corpus uses: episode e takes
slot e % 50 of block e // 50, a block's MT1 seed being `stream_seed(seed, stream, task,
block)`. The recorded `rand_vec` is authoritative: `reset` builds the task from it, so a
recorded layout reproduces its scene without re-running MT1's sampler.

Orientation. Meta-World's fixed cameras (`corner`, `corner2..4`) have their image "up"
axis pointing down in the world (`corner`: xyaxes="-1 1 0 -0.2 -0.2 -1"), so a raw
MuJoCo render shows the table upside down. `upright_turns` reads the camera's pose and
returns the quarter turns that bring world-up to image-up; frames are rotated (never
mirrored) by it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# MuJoCo binds its GL backend at import: default to offscreen EGL so that a headless
# machine or a notebook renders without a display (an exported MUJOCO_GL wins).
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
# Triton first: Mesa's software renderer (llvmpipe) loads the system's LLVM when the first EGL
# context is made; triton (which torch imports with torch._dynamo, e.g. when an optimizer is
# built) carries an LLVM of its own. Loaded after Mesa's, triton's segfaults the process (triton
# 3.8, Mesa 22.3: a render, then `torch.optim.AdamW`, crashed a test worker); loaded first, both work.
with contextlib.suppress(ImportError):  # a torch without triton: no second LLVM to collide with
    import triton._C.libtriton  # noqa: F401  (PyPI's torch ships triton; loading it takes 0.3 s)
try:
    import metaworld
    import mujoco
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, ML1_ARGS_KWARGS
except ModuleNotFoundError as exc:  # the `sim` extra
    raise ModuleNotFoundError(
        f"rendering Meta-World needs {exc.name!r}: pip install 'lawam[sim]' (metaworld, mujoco)"
    ) from exc

SIM_HZ = 80  # Meta-World's own step: frame_skip 5 x 0.0025 s
ACTION_REPEAT = 4  # each stored action is held for 4 Meta-World steps of 1/80 s ...
CONTROL_HZ = SIM_HZ // ACTION_REPEAT  # ... so control runs at 20 Hz
VIDEO_FPS = CONTROL_HZ  # one frame per control step
GOALS_PER_BLOCK = 50  # MT1 draws 50 layouts per seed; episode e uses block e // 50
# Shadows and reflections off: 3-4x faster offscreen rendering on CPU (Mesa llvmpipe,
# ~90 vs ~22 frames/s at 128 px), at the cost of the arm's shadow on the table.
FAST_RENDER = True


class TaskEnvError(RuntimeError):
    """`TaskEnv` used out of order: stepped before `reset` or past Meta-World's truncation."""


@dataclass(frozen=True)
class Layout:
    """One randomised goal/object layout of a task."""

    task: str  # Meta-World v3 task name, e.g. "push-v3"
    mt1_seed: int  # seed given to metaworld.MT1(task, seed=...)
    slot: int  # index into that MT1's train_tasks (0..49)
    rand_vec: tuple[float, ...]  # env._last_rand_vec after reset: object/goal positions


def stream_seed(seed: int, stream: str, task: str, block: int = 0) -> int:
    """Seed of one (corpus seed, stream, task, goal block): stable across runs and machines.

    `stream` ("robot", "human") keeps the two corpora from replaying the same layouts
    when they share a task; crc32 rather than `hash()`, which is salted per process.
    """
    return zlib.crc32(f"{seed}:{stream}:{task}:{block}".encode())


@functools.lru_cache(maxsize=64)
def _mt1_rand_vecs(task: str, mt1_seed: int) -> tuple[tuple[float, ...], ...]:
    """The 50 `rand_vec`s of MT1(task, seed=mt1_seed), in train_tasks order (~1 s per call)."""
    train_tasks = metaworld.MT1(task, seed=mt1_seed).train_tasks
    return tuple(tuple(float(v) for v in pickle.loads(t.data)["rand_vec"]) for t in train_tasks)


def layouts(task: str, *, seed: int, stream: str, count: int) -> list[Layout]:
    """The layouts of episodes 0..count-1 of `task` in the (seed, stream) corpus."""
    if task not in ALL_V3_ENVIRONMENTS:
        raise ValueError(f"unknown Meta-World v3 task {task!r}")
    out = []
    for episode in range(count):
        block, slot = divmod(episode, GOALS_PER_BLOCK)
        mt1_seed = stream_seed(seed, stream, task, block)
        out.append(Layout(task, mt1_seed, slot, _mt1_rand_vecs(task, mt1_seed)[slot]))
    return out


def proprio(obs: np.ndarray) -> np.ndarray:
    """The proprioceptive part of an observation: hand xyz and gripper opening, `obs[..., :4]`.

    Never the object or goal dimensions: a policy fed these cannot read the layout.
    """
    return np.asarray(obs, dtype=np.float32)[..., :4].copy()


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


class TaskEnv:
    """A Meta-World task with an offscreen renderer, stepped at `CONTROL_HZ`; reused across episodes.

    Building the environment and the EGL renderer costs ~0.5 s, so one `TaskEnv` serves
    every episode of its task; `close()` (or the `with` block) frees the GL context.
    Frames are `image_size` high and `width` (default `image_size`) wide; `camera` is
    what `render()` shows, `extra_cameras` can be rendered by name as well.
    """

    def __init__(self, task: str, *, camera: str, image_size: int, width: int | None = None,
                 extra_cameras: Sequence[str] = ()) -> None:
        if task not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"unknown Meta-World v3 task {task!r}")
        self.task, self.camera = task, camera
        self.cameras = (camera, *(c for c in extra_cameras if c != camera))
        self.height, self.width = image_size, width or image_size
        self.env = ALL_V3_ENVIRONMENTS[task]()
        if round(1.0 / self.env.dt) != SIM_HZ:
            raise RuntimeError(f"{task}: Meta-World steps at {1.0 / self.env.dt:.3f} Hz, this module assumes "
                               f"{SIM_HZ} Hz (frame_skip x timestep changed in this Meta-World)")
        self.max_steps: int = self.env.max_path_length // ACTION_REPEAT  # control steps before truncation
        self.last_reward = 0.0  # reward after the last Meta-World step of the last `step`
        self._steps: int | None = None  # control steps since reset; None before the first reset
        self._turns: dict[str, int] = {}
        visual = self.env.model.vis.global_
        visual.offwidth, visual.offheight = max(visual.offwidth, self.width), max(visual.offheight, self.height)
        self.renderer = mujoco.Renderer(self.env.model, height=self.height, width=self.width)
        if FAST_RENDER:
            self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False

    def __enter__(self) -> TaskEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.renderer.close()
        self.env.close()

    def reset(self, layout: Layout) -> np.ndarray:
        """Place objects and goal as `layout` says and return the first observation, (39,) float64."""
        if layout.task != self.task:
            raise ValueError(f"layout of {layout.task!r} given to the {self.task!r} environment")
        # The Task MT1 would hand out for this slot, rebuilt from the recorded rand_vec.
        data = {key: value for key, value in ML1_ARGS_KWARGS[self.task]["kwargs"].items() if key != "task_id"}
        data |= {"rand_vec": np.asarray(layout.rand_vec, dtype=np.float64), "env_cls": type(self.env),
                 "partially_observable": False}
        self.env.set_task(metaworld.Task(env_name=self.task, data=pickle.dumps(data)))
        obs, _ = self.env.reset()
        self._steps, self.last_reward = 0, 0.0
        if not self._turns:  # fixed cameras: their pose is known once the model has been forwarded
            self._turns = {c: upright_turns(self.env.model, self.env.data, c) for c in self.cameras}
        return obs

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        """Hold `action` (clipped to [-1, 1]) for ACTION_REPEAT Meta-World steps.

        Returns the observation after them and whether any of them reported success.
        """
        if self._steps is None:
            raise TaskEnvError(f"{self.task}: step() before reset(); reset to a Layout first")
        if self._steps >= self.max_steps:
            raise TaskEnvError(f"{self.task}: episode is over after {self.max_steps} control steps "
                               "(Meta-World truncates at 500 steps); reset to start another")
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        success = False
        for _ in range(ACTION_REPEAT):
            obs, reward, _, _, info = self.env.step(action)
            success = success or bool(info["success"])
        self._steps += 1
        self.last_reward = float(reward)
        return obs, success

    def render(self, camera: str | None = None) -> np.ndarray:
        """The current state seen from `camera` (default: the env's camera), upright: (H, W, 3) uint8."""
        camera = camera or self.camera
        if camera not in self.cameras:
            raise ValueError(f"camera {camera!r} not set up for this TaskEnv; it renders {self.cameras}")
        if not self._turns:
            raise TaskEnvError(f"{self.task}: render() before reset(); reset to a Layout first")
        self.renderer.update_scene(self.env.data, camera=camera)
        return np.ascontiguousarray(np.rot90(self.renderer.render(), self._turns[camera]))
