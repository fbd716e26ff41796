"""A lost Ray node ends a run within a bounded time: it finishes on the nodes left, or stops
with one retryable line. Never a silent hang holding the store's writer lock.

    watch = NodeWatch()
    while pending:
        ready, _ = ray.wait(pending, num_returns=1, timeout=watch.poll_s)
        watch.delivered(ready)
        watch.check(pending)          # raises InfrastructureError when lost work never resumes

Why a watch, when Ray retries tasks and reconstructs lost objects? Because recovery can stall
for good: seen here with a real two-node cluster, a SIGKILLed worker node left the ingest
waiting forever ("attempting to recover 3 lost objects by resubmitting their tasks", then
nothing for 4.5 minutes) — a block lost with its node is rebuilt by re-running the streaming
decode task that made it, and that re-run can wait on backpressure from a consumer that had
already taken its items. So the driver polls (`ray.wait` with a timeout, never without),
notices a node that was alive and no longer is (the GCS's view, `ray.nodes()`, every
`check_every_s`), and gives whatever was in flight at that moment `grace_s` to deliver: work
Ray redid elsewhere delivers and the run goes on; anything still pending then stops the run
(`InfrastructureError`: the caller commits what is complete, the re-run skips it). Work
submitted after the loss is not suspect: it runs on the nodes left.

A run that is merely slow (a loaded machine, a large model) is never failed: it is logged,
once every `quiet_warn_s` without a result, with what it waits for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import ray

from schemas.errors import InfrastructureError

log = logging.getLogger(__name__)

__all__ = ["NodeWatch", "actor_node", "alive_nodes", "node_names"]


def alive_nodes() -> dict[str, str]:
    """{node id: address} of the nodes the GCS holds alive now."""
    return {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}


def node_names() -> dict[str, str]:
    """{node id: address} of every node the cluster has known, dead ones too."""
    return {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}


def _node_id(_actor) -> str:
    return ray.get_runtime_context().get_node_id()


def actor_node(actor) -> ray.ObjectRef:
    """A ref to the id of the node `actor` runs on (`__ray_call__` runs a function on any actor)."""
    return actor.__ray_call__.remote(_node_id)


class NodeWatch:
    """Tracks the cluster's nodes during one run; see the module docstring."""

    def __init__(self, what: str, grace_s: float = 30.0, check_every_s: float = 2.0, quiet_warn_s: float = 60.0):
        self.what, self.grace_s, self.check_every_s, self.quiet_warn_s = what, grace_s, check_every_s, quiet_warn_s
        self.poll_s = min(1.0, check_every_s)
        self.alive = alive_nodes()
        self.lost: dict[str, str] = {}  # node id -> address, of nodes lost during the run
        self.lost_at: dict[str, float] = {}  # node id -> monotonic time its loss was seen
        self._suspects: set = set()  # in flight when a node was lost, not delivered since
        self._deadline = 0.0
        now = time.monotonic()
        self._checked = now
        self._last_result = now
        self._warned = now

    def delivered(self, ready: Iterable) -> None:
        """These waitables delivered (a result, an error, a generator's next item)."""
        for r in ready:
            self._suspects.discard(r)
            self._last_result = time.monotonic()

    def check(self, pending: Iterable) -> None:
        """Call after every wait with what is still in flight; raises `InfrastructureError` when
        work in flight at a node's loss has not delivered `grace_s` later."""
        now = time.monotonic()
        pending = set(pending)
        if now - self._checked >= self.check_every_s:
            self._checked = now
            alive = alive_nodes()
            gone = {n: a for n, a in self.alive.items() if n not in alive}
            self.alive = alive
            if gone:
                self.lost.update(gone)
                self.lost_at.update(dict.fromkeys(gone, now))
                self._suspects |= pending
                self._deadline = now + self.grace_s
                log.warning("%s: lost Ray node %s; %d tasks in flight get %.0f s to be redone on the %d nodes left",
                            self.what, ", ".join(sorted(gone.values())), len(pending), self.grace_s, len(alive))
        self._suspects &= pending
        if self._suspects and now >= self._deadline:
            raise InfrastructureError(
                f"{self.what}: Ray node {', '.join(sorted(self.lost.values()))} was lost and {len(self._suspects)} "
                f"of the tasks it held did not resume on the {len(self.alive)} nodes left within {self.grace_s:.0f} s")
        if pending and now - max(self._last_result, self._warned) >= self.quiet_warn_s:
            self._warned = now
            log.warning("%s: no result for %.0f s; %d tasks in flight on %d Ray nodes (a loaded machine or a "
                        "large model; a lost node ends the run)", self.what, now - self._last_result, len(pending),
                        len(self.alive))
