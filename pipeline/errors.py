"""Sorting any exception into the hierarchy of `schemas.errors`, and saying it in one line.

    kind = classify(exc)      # "bad_input" | "config" | "infrastructure" | "resource" | "bug"
    if is_retryable(exc): ... # only infrastructure faults are worth a retry
    one_line(exc)             # the line a catalog, a log or a terminal shows for it
    exit_code(exc)            # what `lawam` exits with: 1 retry, 2 bad input/config, 4 resource
    explain(exc)              # the CLI's line: one_line + what to do next; None for a bug

The promise: every failure that is not a bug ends in exactly one line that names the cause
and what to do, and in an exit status that says whether a retry can help. What a failure
means is decided once, here, by the exception's class (and, for foreign ones, its errno or
library); no caller catches domain errors by hand. Only libraries already imported are
looked at: an error cannot come from one that is not loaded, and classifying must never
pull Ray or Icechunk into a process.
"""

from __future__ import annotations

import errno
import re
import sys
from typing import Literal

from schemas.errors import BadInputError, ConfigError, InfrastructureError, LawamError, ResourceError

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


# --- one line -----------------------------------------------------------------------------


def _innermost(e: BaseException, kind: Kind) -> BaseException:
    """The exception in `e`'s cause chain that carries its kind (a RayTaskError's original
    error, an OSError raised under a wrapper), whose message is the one worth a line."""
    seen: set[int] = set()
    cur = e
    while id(cur) not in seen:
        seen.add(id(cur))
        nxt = getattr(cur, "cause", None) or cur.__cause__
        if not isinstance(nxt, BaseException) or classify(nxt) != kind:
            return cur
        cur = nxt
    return cur


def _icechunk_text(e: BaseException) -> str:
    """Icechunk's text is a multi-line report (the message, a context trace, the chain of
    causes): its message, plus the innermost cause when that says something more ("...
    dispatch failure: A region must be set when sending requests to S3.")."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    head = lines[0].removeprefix("x ").removeprefix("× ").strip()
    causes = [ln.lstrip("|`").strip()[2:].strip() for ln in lines[1:] if ln.lstrip("|`").strip().startswith("->")]
    if causes and causes[-1] and causes[-1] not in head:
        return f"{head}: {causes[-1]}"
    return head


def one_line(e: BaseException) -> str:
    """`e` as one line: the innermost exception of its kind in its cause chain, said as
    - our own errors (`schemas.errors`): the first line of the message, which names the file or
      field and the fix;
    - Icechunk's: `store: ` + its message and innermost cause;
    - anything else: `Type: first line` (`ray: Type: ...` for Ray's own exceptions).
    The one place an exception becomes text for a catalog reason, a log line or the CLI."""
    e = _innermost(e, classify(e))
    ic = sys.modules.get("icechunk")
    if ic is not None and isinstance(e, ic.IcechunkError | ic.ConflictError | ic.RebaseFailedError):
        return f"store: {_icechunk_text(e)}"
    text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    if isinstance(e, LawamError) and text:
        return text
    line = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return f"ray: {line}" if type(e).__module__.startswith("ray.") else line


# --- what the CLI does with it ----------------------------------------------------------------

EXIT_INFRASTRUCTURE = 1  # a retry can succeed (a re-run skips what was committed)
EXIT_BAD_INPUT = 2  # bad input or a bad config: the line says what to change
EXIT_QUARANTINED = 3  # an ingest that completed but quarantined episodes (an outcome, not an error)
EXIT_RESOURCE = 4  # a full or read-only disk, damaged stored bytes: a retry fails the same way
_EXIT: dict[Kind, int] = {"bad_input": EXIT_BAD_INPUT, "config": EXIT_BAD_INPUT,
                          "infrastructure": EXIT_INFRASTRUCTURE, "resource": EXIT_RESOURCE}
_ADVICE: dict[Kind, str] = {
    "infrastructure": "retry: a re-run skips what was committed",
    "resource": "the run stopped and the store keeps its last committed version; free space or make the store "
                "writable, then re-run (not retried)",
}


def exit_code(e: BaseException) -> int | None:
    """The `lawam` exit status for `e` (see the EXIT_* constants); None for a bug."""
    return _EXIT.get(classify(e))


def advice(e: BaseException) -> str:
    """What to do next, by kind: retry for infrastructure, free space for a resource fault,
    nothing for bad input or config (their message names the fix). An error class whose
    cause needs other advice says so in its `advice` attribute (StoreCorruptError: verify,
    restore or re-ingest)."""
    kind = classify(e)
    own = getattr(_innermost(e, kind), "advice", None)
    return own if isinstance(own, str) else _ADVICE.get(kind, "")


def explain(e: BaseException) -> str | None:
    """The line `lawam` prints for `e` (`one_line` and its `advice`); None for a bug, which
    keeps its traceback."""
    if classify(e) == "bug":
        return None
    what, todo = one_line(e), advice(e)
    return f"{what} — {todo}" if todo else what


__all__ = ["EXIT_BAD_INPUT", "EXIT_INFRASTRUCTURE", "EXIT_QUARANTINED", "EXIT_RESOURCE", "Kind", "advice",
           "classify", "exit_code", "explain", "is_retryable", "one_line"]
