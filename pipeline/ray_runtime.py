"""Starting Ray the one way every job here does: a new local instance on loopback, or the
cluster named by `RAY_ADDRESS` (never a cluster found by chance on the machine); and the Ray
errors that mean an infrastructure fault, not bad input."""

from __future__ import annotations

import logging
import os

# Ray reads these at import: keep a local instance on 127.0.0.1 (never the machine's address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
from ray import exceptions as rex  # noqa: E402

INFRA_ERRORS = (rex.RayActorError, rex.WorkerCrashedError, rex.ObjectLostError, rex.RaySystemError,
                rex.OutOfMemoryError, rex.TaskCancelledError)


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
    else:
        # "local": always a new instance of our own. Without it Ray joins whatever cluster runs on
        # the machine (it scans for GCS processes and reads /tmp/ray/ray_current_cluster, stale
        # after a `ray stop`), and then refuses num_cpus: every run failed until the file went.
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level=level)
