"""Session fixtures shared by the test suite: small media generated on the fly.

Rendered corpora are cached under `$LAWAM_TEST_CACHE` (default `.pytest_cache/lawam/`
in the repository) and reused across pytest runs: `make_samples` renders again only
when its arguments, its format version or the simulator versions change.
"""

from __future__ import annotations

import os

# MuJoCo picks its GL backend when first imported: offscreen EGL (Mesa on CPU) here.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_CACHE = Path(os.environ.get("LAWAM_TEST_CACHE", REPO_ROOT / ".pytest_cache" / "lawam"))
# Encoders converted to OpenVINO / ONNX (pipeline.encode.converted) are kept beside the corpora;
# set before Ray starts, so its workers use it too. Written by atomic renames: safe under xdist.
os.environ.setdefault("LAWAM_CACHE_DIR", str(TEST_CACHE))


@pytest.fixture(autouse=True)
def _environment_restored():
    """A command run in-process (typer's CliRunner) sets engine variables in os.environ for
    its own run (`flows.cli._env`); they must not leak into later tests: Ray already imported
    here would disagree with a GCS started under them (RAY_AUTH_MODE)."""
    saved = dict(os.environ)
    yield
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)


@pytest.fixture
def one_thread():
    """Torch at one intra-op thread for the test, restored after: the suite shares 2 cores
    with other work, and a second thread only waits for it (oversubscription made small
    models 6-12x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sample_args() -> dict[str, Any]:
    """Arguments of the shared sample corpora: small enough to render in seconds."""
    return {
        "tasks": ("reach-v3",),
        "episodes_per_task": 2,
        "human_tasks": ("drawer-close-v3",),
        "human_episodes_per_task": 2,
        "seed": 0,
        "image_size": 64,
        "cameras": ("corner", "corner2"),
        "progress": False,
    }


@pytest.fixture(scope="session")
def sample_corpora(sample_args: dict[str, Any]) -> Path:
    """Folder holding `robot/` (LeRobot v3.0) and `human/` (video_dir) sample corpora."""
    from pipeline.samples import make_samples

    out_dir = TEST_CACHE / "samples"
    make_samples(out_dir, **sample_args)
    return out_dir


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance for the session, on loopback, with this machine's cores."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from pipeline.ingest import ensure_ray

    ensure_ray()
    yield ray
    ray.shutdown()
