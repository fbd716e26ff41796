"""Leases: a run keeps the store version it reads from being expired by `lawam gc`.

    with hold_version("data/store", version, "train-lam") as lease:   # None: the newest commit
        train_on(lease.version)                                        # gc keeps it meanwhile

Promise: while a training, labelling or evaluation run reads version V of a store, `gc`
keeps V — its commit and every chunk it references — whatever its `--older-than`; when the
run ends, its lease goes with it. A run that dies without ending (SIGKILL, a lost machine)
cannot remove its lease: the lease expires `LEASE_TTL` after it was last renewed, and the
next `gc` deletes it.

How: a lease is an Icechunk tag on V named `lease.<expiry, UTC>.<purpose>.<id>`. Icechunk's
own expiry keeps every tagged commit (`gc_store` deletes only leases whose expiry has
passed), so nothing outside the repository has to be consulted, and a lease works on an
object store as on a local disk. Tags never move, so a renewal creates the next tag and then
deletes the previous one; Icechunk keeps a marker of a few bytes per deleted tag (a name is
never reused), one per renewal.

The bound, 12 hours (`LAWAM_LEASE_TTL=6h` to change it), renewed every quarter of it by a
daemon thread of the run's process: it must outlast anything that stops a live run from
renewing without ending it — a suspended laptop or VM, a process stopped with SIGSTOP, a
storage outage — and it should let a crashed run's version go by the next daily `gc`.
Versions younger than gc's own threshold (default 7 days) are kept anyway: the lease only
matters against an aggressive `gc --older-than`.

Taking a lease and running `gc` exclude each other on local stores (`STORE/.gc.lock`, held
by gc for its whole run and by a lease for the instant it resolves V and tags it), so a
lease is never taken on a version gc is in the middle of dropping; the run waits for a gc
in progress. On object stores there is no such lock: a lease taken in the instant a `gc`
lists the repository's tags can lose that race.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.errors import one_line
from pipeline.store.backend import FileLock, open_repo
from pipeline.store.reader import FeatureStore
from pipeline.uri import is_remote, local_path
from schemas.errors import ConfigError

log = logging.getLogger(__name__)

LEASE_TTL = timedelta(hours=12)
_LEASE = re.compile(r"^lease\.(\d{8}T\d{6}Z)\.([a-z0-9-]+)\.([0-9a-f]{8})$")
_STAMP = "%Y%m%dT%H%M%SZ"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """'7d', '12h', '30m', '90s', '2w' or a number of seconds ('0' is now)."""
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"duration {text!r}: use a number and a unit, e.g. 7d, 12h, 30m, 90s")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def lease_ttl() -> timedelta:
    """`LAWAM_LEASE_TTL` (a duration: 12h, 30m, 2d) or LEASE_TTL."""
    text = os.environ.get("LAWAM_LEASE_TTL")
    if not text:
        return LEASE_TTL
    return parse_duration(text)


@dataclass(frozen=True)
class Lease:
    """One lease tag, as `gc` and `lawam versions` see it."""

    name: str
    version: str
    purpose: str  # the command holding it: train-lam, distill, label, eval
    expires: datetime

    @classmethod
    def parse(cls, name: str, version: str) -> Lease | None:
        """The lease a tag name describes; None for any other tag."""
        m = _LEASE.match(name)
        if not m:
            return None
        expires = datetime.strptime(m.group(1), _STAMP).replace(tzinfo=UTC)
        return cls(name, version, m.group(2), expires)

    def describe(self) -> str:
        return f"lease of a {self.purpose} run, until {self.expires:%Y-%m-%d %H:%M} UTC"


def list_leases(repo) -> list[Lease]:
    out = []
    for name in sorted(repo.list_tags()):
        if _LEASE.match(name):
            out.append(Lease.parse(name, repo.lookup_tag(name)))
    return out


class GcLock(FileLock):
    """Mutual exclusion of `gc` and of taking a lease, on a local store (`STORE/.gc.lock`).
    Blocking: a lease waits for a running gc, gc for the instant a lease takes."""

    file = ".gc.lock"

    def __enter__(self) -> GcLock:
        if not is_remote(self.uri):
            path = Path(local_path(self.uri))
            if path.is_dir():  # no store here: opening it reports that
                self._lock(path)
        return self

    def busy(self, fd: int) -> None:
        log.warning("waiting for a `lawam gc` of %s to finish", self.uri)
        fcntl.flock(fd, fcntl.LOCK_EX)


def _purpose(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:40] or "run"


class VersionLease:
    """Holds one version of a store against `gc` from `__enter__` to `__exit__` (see the
    module docstring). `version` is the commit id it resolved (a tag or None: the newest)."""

    def __init__(self, uri: str, version: str | None, purpose: str, *, ttl: timedelta | None = None):
        self.uri, self.asked, self.purpose = uri, version, _purpose(purpose)
        self.ttl = ttl if ttl is not None else lease_ttl()
        self.version: str = ""
        self.tag: str | None = None  # the current lease tag; None when the store refused one
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> VersionLease:
        with GcLock(self.uri):
            self.version = FeatureStore.open(self.uri, self.asked).version  # StoreError when it is gone
            self.tag = self._take()
        if self.tag is not None:
            self._thread = threading.Thread(target=self._renew, name="lawam-lease", daemon=True)
            self._thread.start()
        return self

    def _take(self) -> str | None:
        """A new lease tag on `version`; None (and a warning) when the store cannot be written."""
        from pipeline.errors import classify

        expires = datetime.now(UTC) + self.ttl
        name = f"lease.{expires:{_STAMP}}.{self.purpose}.{uuid.uuid4().hex[:8]}"
        try:
            open_repo(self.uri, create=False).create_tag(name, snapshot_id=self.version)
        except Exception as e:  # noqa: BLE001 - sorted by classify: only a store we may not write is let go
            if classify(e) != "resource":
                raise
            log.warning("cannot lease version %s of %s (%s): a `lawam gc` of it could expire that version "
                        "while this run reads it; `lawam tag` it to keep it", self.version, self.uri,
                        one_line(e))
            return None
        return name

    def _drop(self, name: str) -> None:
        try:
            open_repo(self.uri, create=False).delete_tag(name)
        except Exception as e:  # noqa: BLE001 - an undeleted lease only expires later: never fatal
            log.warning("could not remove lease %s of %s (%s): it expires by itself", name, self.uri,
                        one_line(e))

    def _renew(self) -> None:
        while not self._stop.wait(max(self.ttl.total_seconds() / 4, 1.0)):
            try:
                with GcLock(self.uri):
                    new = self._take()
            except Exception as e:  # noqa: BLE001 - the lease still holds until it expires; try again later
                log.warning("could not renew the lease on version %s of %s (%s)", self.version, self.uri, e)
                continue
            if new is not None:
                old, self.tag = self.tag, new
                if old:
                    self._drop(old)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.tag is not None:
            self._drop(self.tag)
            self.tag = None


def hold_version(uri: str, version: str | None, purpose: str) -> VersionLease:
    """A lease on `version` (default: the newest commit) of the store at `uri` for a run of
    `purpose`; use as a context manager, read `lease.version` inside."""
    return VersionLease(uri, version, purpose)


__all__ = ["LEASE_TTL", "GcLock", "Lease", "VersionLease", "hold_version", "lease_ttl", "list_leases"]
