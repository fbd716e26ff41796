"""The benchmark workload: synthetic egocentric-like clips (textured scene, camera pan, a
moving "hand"), 640x480 h264 30 fps — the recipe and seed of ../shared/bench/make_clips.py,
so our figures and the anchor scripts' are measured on the same video."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np

W, H, FPS = 640, 480, 30


def make_clips(out: Path, n: int = 8, seconds: float = 10, seed: int = 0) -> list[Path]:
    """Write clip_000.mp4 ... into `out`; clips already there (complete) are reused."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        world = rng.integers(0, 255, (H * 2, W * 3, 3), dtype=np.uint8).astype(np.float32)
        path = out / f"clip_{k:03d}_{seconds:g}s.mp4"
        paths.append(path)
        if path.exists():
            continue
        for _ in range(3):  # smooth it so the codec sees natural-ish texture
            world = (world + np.roll(world, 1, 0) + np.roll(world, 1, 1) + np.roll(world, -1, 0)
                     + np.roll(world, -1, 1)) / 5
        world8 = world.astype(np.uint8)
        tmp = path.with_suffix(".partial.mp4")
        with av.open(str(tmp), "w") as c:
            s = c.add_stream("h264", rate=FPS)
            s.width, s.height, s.pix_fmt = W, H, "yuv420p"
            s.options = {"g": "60", "preset": "veryfast"}
            for i in range(int(seconds * FPS)):
                x, y = int(200 + 150 * np.sin(i / 40 + k)), int(100 + 80 * np.cos(i / 55 + k))
                img = world8[y : y + H, x : x + W].copy()
                cx, cy = int(W / 2 + 120 * np.sin(i / 15)), int(H / 2 + 90 * np.cos(i / 20))
                img[max(cy - 30, 0) : cy + 30, max(cx - 30, 0) : cx + 30] = (220, 40, 40)
                for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        os.replace(tmp, path)  # a killed run never leaves a half clip that looks complete
    return paths
