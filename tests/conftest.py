"""Session fixtures shared by the test suite: small media generated on the fly.

Rendered corpora are cached under `$LAWAM_TEST_CACHE` (default `.pytest_cache/lawam/`
in the repository) and reused across pytest runs: `make_samples` renders again only
when its arguments, its format version or the simulator versions change.

`make test` runs the suite in parallel worker processes (pytest-xdist, `-n`). Each worker is
a process of its own, so it gets engines of its own: its own local Ray (`ray_local`), its own
Prefect harness (`prefect_server`) and PREFECT_HOME, servers on free loopback ports, and
`tmp_path`s under its own base folder. What workers share is built under a lock: the
rendered sample corpora (`make_samples` locks its folder and swaps a finished render into
place) and Ray's authentication token (made once, before the workers start).
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile

# MuJoCo picks its GL backend when first imported: offscreen EGL (Mesa on CPU) here.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

# Prefect keeps its settings profile and the ephemeral server's SQLite database in PREFECT_HOME:
# one per test process, so that parallel workers (and the `lawam` processes they start) never
# migrate or lock one database at once, and no user profile sends test runs to a real server.
# Removed at exit (xdist workers end without pytest_unconfigure), after Prefect's own exit
# handlers, registered later, have stopped any server using it.
PREFECT_HOME = tempfile.mkdtemp(prefix="lawam-test-prefect-")
os.environ["PREFECT_HOME"] = PREFECT_HOME
atexit.register(shutil.rmtree, PREFECT_HOME, ignore_errors=True)
# A `lawam` process started by a test has no server configured: its flows start Prefect's
# ephemeral one, which takes longer than Prefect's default 20 s while parallel workers run.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

# Torch's OpenMP threads wait for work asleep rather than spinning, here and in every process
# started from here (Ray's workers included): the encoder and label actors run one thread per
# core beside decode tasks, other workers and other work on the machine, and a spinning thread
# burns its time slice waiting for a partner that is not running. A small model at 2 threads on
# the busy 2-core machine ran 40-90 calls/s spinning, 2,000-3,300 passive (1 thread: 600-1,200).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Workers share the cores: torch's OpenMP pool (OMP_NUM_THREADS) and Mesa's software renderer
# (LP_NUM_THREADS) get cores / workers threads, here and in the `lawam` processes, render
# children and Ray workers started from here, which inherit them; so that together the workers
# use each core once. Oversubscribed, a small model ran 6-12x slower.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _threads)
    os.environ.setdefault("LP_NUM_THREADS", _threads)

from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_CACHE = Path(os.environ.get("LAWAM_TEST_CACHE", REPO_ROOT / ".pytest_cache" / "lawam"))
# Encoders converted to OpenVINO / ONNX (pipeline.encode.converted) are kept beside the corpora;
# set before Ray starts, so its workers use it too. Written by atomic renames: safe under xdist.
os.environ.setdefault("LAWAM_CACHE_DIR", str(TEST_CACHE))


def pytest_configure(config: pytest.Config) -> None:
    """Before parallel workers start (in the controlling process): Ray's token. A new local Ray
    uses token authentication and writes ~/.ray/auth_token when there is none; two workers
    starting Ray at once on a fresh machine could each write their own, and a process that
    reads the file would then hold the other cluster's token."""
    parallel = getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput")
    if parallel and not (Path.home() / ".ray" / "auth_token").exists():
        subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token", "--generate"],
                       capture_output=True, check=True, timeout=120)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a parallel run, the tests marked `long` (minutes each, most of it waiting on Ray
    clusters and servers) are spread evenly over the collection order instead of sitting
    together: `--dist worksteal` hands each worker a contiguous share of that order, so each
    worker starts a long test early rather than one worker running them all one after the
    other at the end (that worker was the run's last 11 minutes). Long tests marked with the
    same `long(together=NAME)` stay side by side, so that one worker runs them on one
    module fixture (a cluster start fewer); a module's long tests are taken in turn with the
    other modules', so that neighbours (one worker's share) come from different modules. The
    same order in every worker (xdist compares them); a serial run keeps the file order."""
    if "PYTEST_XDIST_WORKER_COUNT" not in os.environ:
        return
    groups: dict[object, list[pytest.Item]] = {}
    for item in items:
        if marker := item.get_closest_marker("long"):
            groups.setdefault(marker.kwargs.get("together", item.nodeid), []).append(item)
    if not groups:
        return
    by_module: dict[str, list[list[pytest.Item]]] = {}
    for group in groups.values():
        by_module.setdefault(group[0].module.__name__, []).append(group)
    units = [module[i] for i in range(max(map(len, by_module.values()))) for module in by_module.values()
             if i < len(module)]
    rest = [item for item in items if not item.get_closest_marker("long")]
    step = (len(rest) + len(units)) / len(units)
    slots = {int((i + 0.1) * step): unit for i, unit in enumerate(units)}  # a little in: a group is not split
    it = iter(rest)
    ordered: list[pytest.Item] = []
    for i in range(len(rest) + len(units)):
        ordered.extend(slots[i] if i in slots else [next(it)])
    items[:] = ordered


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


@contextmanager
def _one_worker_at_a_time(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[None]:
    """A lock shared by the parallel workers of this run (a file in the run's base temporary
    folder, which holds each worker's own); nothing to wait for in a serial run."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    with open(tmp_path_factory.getbasetemp().parent / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory: pytest.TempPathFactory):
    """One real local Ray instance for the session (each parallel worker its own), on loopback,
    with this machine's cores. Workers start theirs one at a time: Ray gives a starting node 30 s
    to register with its GCS, which several starts at once on a busy machine can miss."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from pipeline.ingest import ensure_ray

    with _one_worker_at_a_time(tmp_path_factory, "ray-start"):
        ensure_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_server():
    """Prefect's test harness for the session: a temporary local server and SQLite database
    (one per worker process, on a free port), started on first use. Flows run in this process
    report to it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
