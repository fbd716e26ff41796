"""Keeping a store small and its important versions alive: tags and garbage collection.

    tag_version("data/store", version, "run-2026-11-26")   # this version survives gc
    gc_store("data/store", older_than=timedelta(days=7))    # drop old history and its chunks

Garbage collection is Icechunk's own: `expire_snapshots` drops commits older than the
threshold from the history (every tag's commit and every branch tip are kept), then
`garbage_collect` deletes the files that no kept commit references and that are older than
the threshold: chunks of killed runs, chunks rewritten by later appends, old indexes. A
commit that is gone cannot be opened any more. What keeps one:

- a tag (`lawam tag`; a finished training run tags the version its card names, `keep_version`);
- a lease (`pipeline.store.leases`): a run holds the version it reads while it runs; gc first
  deletes the leases whose expiry has passed (runs that died), then honours the rest;
- being a branch tip, or younger than the threshold.

`GcReport.kept` says, for every version still openable, why.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import zarr

from pipeline.errors import one_line
from pipeline.store.backend import StoreBusyError, StoreError, WriterLock, open_repo
from pipeline.store.catalog_file import sync_catalog_file
from pipeline.store.index import EpisodeIndex
from pipeline.store.leases import GcLock, Lease, list_leases

log = logging.getLogger(__name__)

_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _resolve(repo, uri: str, version: str) -> str:
    """A commit id, or the name of a tag or branch, as a commit id."""
    for lookup in (repo.lookup_snapshot, repo.lookup_tag, repo.lookup_branch):
        try:
            found = lookup(version)
        except Exception:  # noqa: BLE001 - icechunk raises its own types for unknown refs
            continue
        return found.id if hasattr(found, "id") else found
    raise StoreError(f"store {uri!r} has no version, tag or branch {version!r}")


def tag_version(uri: str, version: str, name: str) -> str:
    """Tag `version` (a commit id, tag or branch name) as `name`, so `gc` keeps it and
    `FeatureStore.open(uri, version=name_or_id)` reopens it; returns the commit id. Tags never
    move: an existing name is an error."""
    if not _TAG.match(name):
        raise StoreError(f"tag {name!r}: letters, digits, '.', '_' or '-' (at most 128), not starting with '.', '-'")
    repo = open_repo(uri, create=False)
    snapshot = _resolve(repo, uri, version)
    if name in repo.list_tags():
        raise StoreError(f"store {uri!r} already has a tag {name!r} (on {repo.lookup_tag(name)}); tags never move")
    try:
        repo.create_tag(name, snapshot_id=snapshot)
    except Exception as e:  # noqa: BLE001 - a concurrent tag of the same name
        raise StoreError(f"store {uri!r}: cannot tag {snapshot} as {name!r}: {one_line(e)}") from None
    return snapshot


def tags(uri: str) -> dict[str, list[str]]:
    """Commit id -> its tag names (sorted), leases included."""
    repo = open_repo(uri, create=False)
    out: dict[str, list[str]] = {}
    for name in sorted(repo.list_tags()):
        out.setdefault(repo.lookup_tag(name), []).append(name)
    return out


def keep_version(uri: str, version: str, name: str) -> str | None:
    """Tag commit `version` as `name` for good (a finished run keeps the version its card
    names); a tag of that name already on it is kept as it is. Where `name` is on another
    commit (the same weights trained again on a newer version of the same features: a label
    commit makes one), the tag is `name-VERSION`, so no tag moves and the version is kept.
    Returns the tag, or None with a warning when the store cannot be written now (read-only,
    forbidden, unreachable): the version is then only as safe as gc's threshold."""
    from pipeline.errors import classify

    repo = open_repo(uri, create=False)
    existing = set(repo.list_tags())
    if name in existing:
        if repo.lookup_tag(name) == version:
            return name
        name = f"{name}-{version}"  # names its version: if it exists, it is on `version`
        if name in existing:
            return name
    try:
        repo.create_tag(name, snapshot_id=version)
    except Exception as e:  # noqa: BLE001 - sorted by classify: a bug still fails loudly
        if classify(e) not in ("resource", "infrastructure"):
            raise
        # The run it keeps is done: a tag that cannot be written is said, never worth the run.
        log.warning("cannot tag version %s of %s (%s): `lawam gc` may expire it; tag it yourself: "
                    "`lawam tag %s %s %s`", version, uri, one_line(e), uri, version, name)
        return None
    return name


@dataclass
class GcReport:
    expired: int  # commits dropped from the history
    chunks_deleted: int
    manifests_deleted: int
    snapshots_deleted: int
    bytes_deleted: int
    kept: dict[str, list[str]]  # commit id -> why it is still openable (tip, tag, lease, younger than the cut)
    dry_run: bool = False
    leases_expired: list[Lease] = field(default_factory=list)  # leases of runs that died, deleted first


def gc_store(uri: str, older_than: timedelta, *, dry_run: bool = False, branch: str = "main") -> GcReport:
    """Delete expired leases, expire commits older than `older_than` (keeping every tag's and
    every live lease's commit and every branch tip) and delete the files no kept commit
    references that are older than `older_than`. Holds the writer lock (local stores), so no
    ingest or label run commits meanwhile, and the gc lock, so no run takes a lease meanwhile;
    files younger than the threshold are kept, so on object stores a writer that started less
    than `older_than` ago keeps its uncommitted chunks. `dry_run` expires nothing and deletes
    nothing: it counts the files no commit references now."""
    cut = datetime.now(UTC) - older_than
    with WriterLock(uri), GcLock(uri):
        repo = open_repo(uri, create=False)
        now = datetime.now(UTC)
        dead = [lease for lease in list_leases(repo) if lease.expires <= now]
        expired: set[str] = set()
        if not dry_run:
            for lease in dead:
                repo.delete_tag(lease.name)
            expired = repo.expire_snapshots(older_than=cut)
        summary = repo.garbage_collect(cut, dry_run=dry_run)
        repair_catalog_file(uri, branch=branch, locked=True)
        kept = _kept(repo, cut, {lease.name for lease in dead} if dry_run else set(), branch)
    return GcReport(len(expired), summary.chunks_deleted, summary.manifests_deleted, summary.snapshots_deleted,
                    summary.bytes_deleted, kept, dry_run, dead)


def _kept(repo, cut: datetime, skip: set[str], branch: str) -> dict[str, list[str]]:
    """Every commit still openable and why: branch tips, tags, leases, history younger than `cut`."""
    kept: dict[str, list[str]] = {}
    for name in sorted(repo.list_branches()):
        kept.setdefault(repo.lookup_branch(name), []).append(f"tip of branch {name}")
    for name in sorted(repo.list_tags()):
        if name in skip:
            continue
        snapshot = repo.lookup_tag(name)
        lease = Lease.parse(name, snapshot)
        kept.setdefault(snapshot, []).append(lease.describe() if lease else f"tag {name}")
    history = list(repo.ancestry(branch=branch))
    for i, snap in enumerate(history):
        if snap.id not in kept:
            kept[snap.id] = ["younger than the threshold" if snap.written_at >= cut else
                             "the repository's first commit" if i == len(history) - 1 else
                             "older than the threshold (a dry run expires nothing)"]
    return kept


def repair_catalog_file(uri: str, *, branch: str = "main", locked: bool = False) -> bool:
    """Rewrite URI/catalog.parquet if it does not describe the tip of `branch`; True if it was
    rewritten. Takes the writer lock unless `locked` (the caller holds it); when another
    process holds it, does nothing (that writer rewrites the file itself)."""
    if not locked:
        try:
            with WriterLock(uri):
                return repair_catalog_file(uri, branch=branch, locked=True)
        except StoreBusyError:
            return False
    repo = open_repo(uri, create=False)
    if branch not in repo.list_branches():
        return False
    session = repo.readonly_session(branch=branch)
    try:
        root = zarr.open_group(session.store, mode="r")
    except zarr.errors.GroupNotFoundError:  # nothing committed yet: no catalog to describe
        return False
    return sync_catalog_file(uri, EpisodeIndex(root, repo, session.snapshot_id), session.snapshot_id)
