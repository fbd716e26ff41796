"""Keeping a store small and its important versions alive: tags and garbage collection.

    tag_version("data/store", version, "run-2026-11-26")   # this version survives gc
    gc_store("data/store", older_than=timedelta(days=7))    # drop old history and its chunks

Garbage collection is Icechunk's own: `expire_snapshots` drops commits older than the
threshold from the history (every tag's commit and every branch tip are kept), then
`garbage_collect` deletes the files that no kept commit references and that are older than
the threshold: chunks of killed runs, chunks rewritten by later appends, old indexes. A
commit that is gone cannot be opened any more: tag the versions training runs read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import zarr

from pipeline.store.backend import StoreBusyError, StoreError, WriterLock, error_summary, open_repo
from pipeline.store.catalog_file import sync_catalog_file
from pipeline.store.index import EpisodeIndex

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def parse_duration(text: str) -> timedelta:
    """'7d', '12h', '30m', '90s', '2w' or a number of seconds ('0' is now)."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"duration {text!r}: use a number and a unit, e.g. 7d, 12h, 30m, 90s")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


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
        raise StoreError(f"store {uri!r}: cannot tag {snapshot} as {name!r}: {error_summary(e)}") from None
    return snapshot


def tags(uri: str) -> dict[str, list[str]]:
    """Commit id -> its tag names (sorted)."""
    repo = open_repo(uri, create=False)
    out: dict[str, list[str]] = {}
    for name in sorted(repo.list_tags()):
        out.setdefault(repo.lookup_tag(name), []).append(name)
    return out


@dataclass
class GcReport:
    expired: int  # commits dropped from the history
    chunks_deleted: int
    manifests_deleted: int
    snapshots_deleted: int
    bytes_deleted: int
    kept: list[str]  # commits still openable: branch tips, tags and history newer than the cut
    dry_run: bool = False


def gc_store(uri: str, older_than: timedelta, *, dry_run: bool = False, branch: str = "main") -> GcReport:
    """Expire commits older than `older_than` (keeping every tag's commit and every branch
    tip) and delete the files no kept commit references that are older than `older_than`.
    Holds the writer lock (local stores), so no ingest or label run commits meanwhile; files
    younger than the threshold are kept, so on object stores a writer that started less than
    `older_than` ago keeps its uncommitted chunks. `dry_run` expires nothing and deletes
    nothing: it counts the files no commit references now."""
    cut = datetime.now(UTC) - older_than
    with WriterLock(uri):
        repo = open_repo(uri, create=False)
        expired: set[str] = set()
        if not dry_run:
            expired = repo.expire_snapshots(older_than=cut)
        summary = repo.garbage_collect(cut, dry_run=dry_run)
        repair_catalog_file(uri, branch=branch, locked=True)
        kept = [s.id for s in repo.ancestry(branch=branch)]
        for tagged in tags(uri):
            if tagged not in kept:
                kept.append(tagged)
    return GcReport(len(expired), summary.chunks_deleted, summary.manifests_deleted, summary.snapshots_deleted,
                    summary.bytes_deleted, kept, dry_run)


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
    return sync_catalog_file(uri, EpisodeIndex(root, repo, session.snapshot_id))
