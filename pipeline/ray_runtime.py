"""Starting Ray the one way every job here does: a new local instance on loopback, or the
cluster named by `RAY_ADDRESS` (never a cluster found by chance on the machine). (Which Ray
errors mean an infrastructure fault is `pipeline.errors.classify`'s.)

A local instance ends with the process that started it, however that process ends: a reaper
(`pipeline.ray_reaper`) kills whatever of the instance is left once the driver is gone, so a
SIGKILLed `lawam label` or `lawam ingest` leaves no Ray process behind.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

# Ray reads these at import: keep a local instance on 127.0.0.1 (never the machine's address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from pipeline.ray_reaper import OWNER_ENV  # noqa: E402


def ensure_ray(verbose: bool | None = None) -> None:
    """Local Ray by default (all cores, loopback only); `RAY_ADDRESS` selects a cluster.

    Ray is as talkative as our own logging: unless `verbose` (default: this process logs
    at INFO or below, as `lawam -v` sets), its "ray" logger is kept at WARNING, so its
    start-up lines are dropped. (Its notice that token authentication was enabled by
    default is avoided by stating `RAY_AUTH_MODE=token` before Ray is imported, which the
    CLI does: see `flows.cli`.)"""
    if ray.is_initialized():
        return
    if verbose is None:
        verbose = logging.getLogger().getEffectiveLevel() <= logging.INFO
    level = logging.INFO if verbose else logging.WARNING
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False, logging_level=level)  # a cluster: connect, size nothing
        return
    token = _start_reaper()
    try:
        # "local": always a new instance of our own. Without it Ray joins whatever cluster runs on
        # the machine (it scans for GCS processes and reads /tmp/ray/ray_current_cluster, stale
        # after a `ray stop`), and then refuses num_cpus: every run failed until the file went.
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level=level)
    finally:  # only the instance's processes carry the token (they copied the environment at their start)
        if token:
            os.environ.pop(OWNER_ENV, None)


_reapers: list[subprocess.Popen] = []  # kept open for the life of this process: their stdin is the signal


def _start_reaper() -> str | None:
    """Start the reaper of the local instance about to be started and mark this process's
    environment with its token, for `ray.init` to pass on; None where there is no /proc."""
    if not Path("/proc/self/environ").exists():
        return None
    token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
    _reapers.append(subprocess.Popen([sys.executable, str(Path(__file__).with_name("ray_reaper.py")), token],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, env=env))
    os.environ[OWNER_ENV] = token
    return token
