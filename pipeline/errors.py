"""Sorting any exception into the hierarchy of `schemas.errors`.

    kind = classify(exc)      # "bad_input" | "config" | "infrastructure" | "resource" | "bug"
    if is_retryable(exc): ... # only infrastructure faults are worth a retry

Only libraries already imported are looked at: an error cannot come from one that is not
loaded, and classifying must never pull Ray or Icechunk into a process.
"""

from __future__ import annotations

import errno
import re
import sys
from typing import Literal

from schemas.errors import BadInputError, ConfigError, InfrastructureError, ResourceError

Kind = Literal["bad_input", "config", "infrastructure", "resource", "bug"]

# OSError errnos that say the machine cannot take the write: a retry fails the same way.
RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
# OSError errnos of a network or a remote peer: worth a retry. EIO too: fsspec/s3fs report a
# remote read that failed after its own retries as EIO, and a local EIO is no verdict on the bytes.
NETWORK_ERRNOS = frozenset({errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT,
                            errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE, errno.EAGAIN,
                            errno.EIO})
_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")  # how Rust (Icechunk, object_store) reports an errno


def _ray_infra(e: BaseException) -> bool:
    if "ray" not in sys.modules:
        return False
    from ray import exceptions as rex

    return isinstance(e, rex.RayActorError | rex.WorkerCrashedError | rex.ObjectLostError | rex.RaySystemError
                      | rex.OutOfMemoryError | rex.NodeDiedError | rex.GetTimeoutError | rex.TaskCancelledError)


def _icechunk(e: BaseException) -> Kind | None:
    """Icechunk reports every storage fault as one exception type with Rust's text: a full or
    read-only local disk shows as "... (os error 28)"; anything else it raises (an object store
    error, a conflicting commit) is infrastructure."""
    ic = sys.modules.get("icechunk")
    if ic is None or not isinstance(e, ic.IcechunkError | ic.ConflictError | ic.RebaseFailedError):
        return None
    codes = {int(c) for c in _OS_ERROR_IN_TEXT.findall(str(e))}
    return "resource" if codes & RESOURCE_ERRNOS else "infrastructure"


def _remote_infra(e: BaseException) -> bool:
    """botocore / aiohttp / requests connection and 5xx errors (object stores over HTTP)."""
    names = {c.__name__ for c in type(e).__mro__}
    if names & {"EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
                "ClientConnectionError", "ServerDisconnectedError", "ClientOSError", "ServerTimeoutError",
                "ClientPayloadError", "HTTPServerError"}:  # aiohttp's, PyAV's (FFmpeg http 5xx)
        return True
    response = getattr(e, "response", None)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(response, dict) else None
    return isinstance(status, int) and status >= 500


def classify(e: BaseException) -> Kind:
    """What a failure means (see `schemas.errors`). Follows `__cause__` through wrappers
    (a Ray task error, an exception re-raised `from` the original) to the first fault it
    recognises."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ResourceError):
            return "resource"
        if isinstance(cur, InfrastructureError) or _ray_infra(cur) or _remote_infra(cur):
            return "infrastructure"
        if (kind := _icechunk(cur)) is not None:
            return kind
        if isinstance(cur, ConfigError):
            return "config"
        if isinstance(cur, BadInputError):
            return "bad_input"
        if isinstance(cur, OSError) and cur.errno in RESOURCE_ERRNOS:
            return "resource"
        network = isinstance(cur, OSError) and cur.errno in NETWORK_ERRNOS
        if network or isinstance(cur, ConnectionError | TimeoutError):
            return "infrastructure"
        cur = getattr(cur, "cause", None) or cur.__cause__  # RayTaskError keeps the original in .cause
    return "bug"


def is_retryable(e: BaseException) -> bool:
    """Only infrastructure faults: a retry cannot fix bad input, a bad config, a full disk or a bug."""
    return classify(e) == "infrastructure"


__all__ = ["Kind", "classify", "is_retryable"]
