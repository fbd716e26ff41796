"""Write a tiny LeRobot dataset with the real `lerobot` library, to check our reader against it.

Not part of the test suite: `lerobot` pins its own torch, so it lives in a throwaway venv.
lerobot 0.4.x writes codebase v3.0, lerobot 0.3.3 writes v2.1; the outputs are checked in as
tests/fixtures_lerobot/real_v30 and real_v21 and read by tests/test_sources.py:

    python3 -m venv /tmp/lerobot-venv && /tmp/lerobot-venv/bin/pip install lerobot==0.4.4
    /tmp/lerobot-venv/bin/python tests/fixtures_lerobot/make_real_lerobot.py tests/fixtures_lerobot/real_v30
    python3 -m venv /tmp/lerobot-v21-venv && /tmp/lerobot-v21-venv/bin/pip install lerobot==0.3.3
    /tmp/lerobot-v21-venv/bin/python tests/fixtures_lerobot/make_real_lerobot.py tests/fixtures_lerobot/real_v21

Works offline: `LeRobotDataset.create(root=...)` never touches the Hub. The dataset has 3
episodes of 12/9/15 frames (64x48 camera "observation.images.front", 10 fps, 2 tasks),
actions whose first component is `1000 * episode + frame` so a reader can check it got each
episode's own rows, and the library's default video codec.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
from pathlib import Path

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

LENGTHS = (12, 9, 15)
TASKS = ("pick up the red cube", "open the drawer", "pick up the red cube")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="output folder (replaced if it exists)")
    ap.add_argument("--vcodec", default=None, help="video codec; default = the library's default")
    args = ap.parse_args()
    if args.root.exists():
        shutil.rmtree(args.root)
    features = {
        "observation.images.front": {"dtype": "video", "shape": (48, 64, 3), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "z"]},
        "action": {"dtype": "float32", "shape": (4,), "names": ["dx", "dy", "dz", "grip"]},
    }
    kwargs = {"vcodec": args.vcodec} if args.vcodec else {}
    ds = LeRobotDataset.create(
        repo_id="lawam/real_tiny", fps=10, features=features, root=args.root, use_videos=True, **kwargs
    )
    # lerobot < 0.4 (codebase v2.1) takes the task as an argument of add_frame; 0.4 in the frame.
    task_as_arg = "task" in inspect.signature(ds.add_frame).parameters
    for ep, (n, task) in enumerate(zip(LENGTHS, TASKS, strict=True)):
        for i in range(n):
            frame = {
                "observation.images.front": np.full((48, 64, 3), (ep * 80 + i * 5) % 256, dtype=np.uint8),
                "observation.state": np.array([ep, i, 0], dtype=np.float32),
                "action": np.array([1000 * ep + i, 0, 0, 1], dtype=np.float32),
            }
            if task_as_arg:
                ds.add_frame(frame, task=task)
            else:
                ds.add_frame({**frame, "task": task})
        ds.save_episode()
    if hasattr(ds, "finalize"):  # 0.4+: closes the parquet writers (v3.0 footers)
        ds.finalize()
    info = json.loads((args.root / "meta" / "info.json").read_text())
    print(json.dumps(info, indent=1))
    for p in sorted(args.root.rglob("*")):
        if p.is_file():
            print(p.relative_to(args.root), p.stat().st_size)


if __name__ == "__main__":
    main()
