"""Starting Ray the one way every job here does: local on loopback, or the cluster named by
`RAY_ADDRESS`; and the Ray errors that mean an infrastructure fault, not bad input."""

from __future__ import annotations

import os

# Ray reads these at import: keep a local instance on 127.0.0.1 (never the machine's address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
from ray import exceptions as rex  # noqa: E402

INFRA_ERRORS = (rex.RayActorError, rex.WorkerCrashedError, rex.ObjectLostError, rex.RaySystemError,
                rex.OutOfMemoryError, rex.TaskCancelledError)


def ensure_ray() -> None:
    """Local Ray by default (all cores, loopback only); `RAY_ADDRESS` selects a cluster."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
