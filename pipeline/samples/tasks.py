"""The Meta-World task catalogue the sample corpora draw from, and argument checks.

Every Meta-World v3 task ships a scripted expert (`metaworld.policies.ENV_POLICY_MAP`);
this module pairs each with the natural-language instruction written into the
corpora (LeRobot `meta/tasks.parquet` for robot episodes, `manifest.csv` for the
human stand-in). Validation lives here so that a bad name fails before any
environment is built or any frame rendered.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from schemas.errors import ConfigError

# The instruction a person would give for each task; short and imperative, like the
# captions of egocentric collections.
TASK_INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "put the ring on the peg",
    "basketball-v3": "dunk the ball into the basket",
    "bin-picking-v3": "move the puck from one bin to the other",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button behind the wall from the top",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "take the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-close-v3": "turn the faucet handle to close it",
    "faucet-open-v3": "turn the faucet handle to open it",
    "hammer-v3": "hammer the nail into the wall",
    "hand-insert-v3": "insert the gripper into the hole",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "pick-out-of-hole-v3": "pick the peg out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "plate-slide-back-side-v3": "slide the plate back into the cabinet from the side",
    "plate-slide-back-v3": "slide the plate back into the cabinet",
    "plate-slide-side-v3": "slide the plate into the cabinet from the side",
    "plate-slide-v3": "slide the plate into the cabinet",
    "push-back-v3": "push the puck back to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck to the goal behind the wall",
    "reach-v3": "reach to the goal position",
    "reach-wall-v3": "reach over the wall to the goal position",
    "shelf-place-v3": "place the puck on the shelf",
    "soccer-v3": "kick the ball into the goal",
    "stick-pull-v3": "grab the stick and pull the box with it",
    "stick-push-v3": "grab the stick and push the box with it",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-close-v3": "slide the window closed",
    "window-open-v3": "slide the window open",
}

# Scripted experts that, with each action held for 4 Meta-World steps (20 Hz control),
# solved 50 of 50 layouts (seed 0) in 8-37 control steps to first success: a default
# corpus is short to render and every episode shows the task done.
DEFAULT_TASKS: tuple[str, ...] = ("reach-v3", "push-v3", "drawer-open-v3", "button-press-topdown-v3", "door-open-v3")
# Tasks the robot corpus does not hold, solved the same way (50 of 50 layouts in 20-25
# steps): the human stand-in shows other behaviour.
DEFAULT_HUMAN_TASKS: tuple[str, ...] = ("drawer-close-v3", "window-open-v3")

# Cameras of the Meta-World Sawyer scene (metaworld/assets/objects/assets/xyz_base.xml).
KNOWN_CAMERAS: tuple[str, ...] = (
    "corner",
    "corner2",
    "corner3",
    "corner4",
    "topview",
    "behindGripper",
    "gripperPOV",
)


class SampleError(ConfigError):
    """An argument of the sample generator is wrong; the message names it and the fix."""


def check_tasks(tasks: Sequence[str], field: str) -> tuple[str, ...]:
    """The task names as a tuple, or `SampleError` naming the first unknown or repeated one."""
    if isinstance(tasks, str):  # a bare string would iterate as characters
        tasks = (tasks,)
    seen: set[str] = set()
    for name in tasks:
        if name not in TASK_INSTRUCTIONS:
            close = difflib.get_close_matches(str(name), TASK_INSTRUCTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SampleError(
                f"unknown Meta-World task {name!r} in {field}{hint}; expected a v3 task name such as "
                f"{', '.join(DEFAULT_TASKS)} (all {len(TASK_INSTRUCTIONS)} in "
                "pipeline.samples.TASK_INSTRUCTIONS)"
            )
        if name in seen:
            raise SampleError(f"task {name!r} is listed twice in {field}")
        seen.add(name)
    return tuple(tasks)


def check_cameras(cameras: Sequence[str], field: str) -> tuple[str, ...]:
    """The camera names as a tuple, or `SampleError` naming the unknown one."""
    if isinstance(cameras, str):
        cameras = (cameras,)
    if not cameras:
        raise SampleError(f"{field} is empty; give at least one camera, e.g. ('corner',)")
    for name in cameras:
        if name not in KNOWN_CAMERAS:
            raise SampleError(f"unknown camera {name!r} in {field}; expected one of {', '.join(KNOWN_CAMERAS)}")
    if len(set(cameras)) != len(cameras):
        raise SampleError(f"{field} lists a camera twice: {tuple(cameras)!r}")
    return tuple(cameras)


def check_count(value: int, field: str) -> int:
    """`value` if it is an int >= 1, else `SampleError` naming `field`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SampleError(f"{field} must be an integer >= 1, got {value!r}")
    return value


def check_image_size(value: int) -> int:
    """Frame height in pixels: even (yuv420p halves chroma) and 32..1024."""
    if isinstance(value, bool) or not isinstance(value, int) or not 32 <= value <= 1024 or value % 2:
        raise SampleError(f"image_size must be an even integer in 32..1024, got {value!r}")
    return value
