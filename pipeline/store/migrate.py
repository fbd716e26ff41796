"""Store layout 1 -> 2: the index, files, label-set and curation-set tables rewritten as
append-only tables.

Promise: a store written by an older lawam (layout 1) keeps working. Readers read both layouts,
so every version stays openable exactly as it was committed. The first writer (`StoreWriter`,
`LabelWriter` or `CurationWriter`) to open a layout-1 store rewrites its tables in the new layout in one commit of
its own ("migrate the store to layout 2"), under the writer lock, before doing anything else:
the episodes, their rows in the shards, label and curation arrays, keys, hashes and the commit
each row came from are unchanged; the previous version still holds the old tables. A run killed during the
migration leaves the store at layout 1, and the next writer migrates it again.

A store of a newer layout than this lawam's is refused by writers and readers alike, in one
line saying to upgrade lawam.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from pipeline.store import index as episode_index
from pipeline.store import table
from pipeline.store.catalog_file import sync_catalog_file
from pipeline.store.files import FILES_GROUP
from pipeline.store.format import CURATION_GROUP, LABELS_GROUP, SPANS
from pipeline.store.index import INDEX_GROUP, EpisodeIndex
from schemas import INDEX_SCHEMA, LABEL_INDEX_SCHEMA, STORE_LAYOUT_VERSION
from schemas.tables import CURATION_INDEX_SCHEMA, CURATION_SPANS_SCHEMA, FILES_SCHEMA

log = logging.getLogger(__name__)

INDEX = "index"  # a derived set's index table, in its group
_LAYOUT_2_ONLY = ("key_hash", "index_row")  # columns a layout-1 index lacks


def index_table(group: zarr.Group, schema: pa.Schema) -> table.Table:
    """The index table of a set's group, either layout (a layout-1 index, rewritten whole per
    commit, lacks `key_hash` and `index_row`: derived from its keys, and -1, "match by hash")."""
    legacy_schema = pa.schema([f for f in schema if f.name not in _LAYOUT_2_ONLY])
    rows = table.Table(group.get(INDEX), schema, legacy_schema, legacy_keys=lambda t: t["key"])
    if rows.legacy is not None and "index_row" not in rows.legacy.column_names:
        rows.legacy = rows.legacy.append_column("index_row", pa.array(np.full(rows.rows, -1, np.int64)))
    return rows

def needs_migration(attrs: dict) -> bool:
    """Whether a store root with these attributes is of an older layout."""
    return "lawam_layout" in attrs and attrs["lawam_layout"] < STORE_LAYOUT_VERSION


def _rewrite(root: zarr.Group, path: str, schema: pa.Schema, rows: pa.Table) -> zarr.Group:
    del root[path]
    group = root.require_group(path)
    table.append(group, schema, rows)
    return group


def migrate_root(root: zarr.Group, repo, snapshot_id: str) -> dict[str, int]:
    """Rewrite the layout-1 tables of `root` (a writable session at `snapshot_id`) in this
    layout; returns how many rows each kind of table held."""
    counts = {"episodes": 0, "files": 0, "labels": 0, "curated": 0}
    episodes = EpisodeIndex(root, repo, snapshot_id)
    if episodes.legacy is not None:
        ends, ids = episodes.batches()
        group = _rewrite(root, INDEX_GROUP, INDEX_SCHEMA, episodes.legacy.select(INDEX_SCHEMA.names))
        commits = group.require_group(episode_index.COMMITS)
        episode_index.record_batches(commits, ends, ids)
        counts["episodes"] = episodes.rows
    if FILES_GROUP in root and table.is_legacy(root[FILES_GROUP]):
        files = table.read_legacy(root[FILES_GROUP], FILES_SCHEMA)
        _rewrite(root, FILES_GROUP, FILES_SCHEMA, files)
        counts["files"] = files.num_rows
    for group_name, schema in ((LABELS_GROUP, LABEL_INDEX_SCHEMA), (CURATION_GROUP, CURATION_INDEX_SCHEMA)):
        if group_name not in root:
            continue
        for name, group in list(root[group_name].groups()):
            if INDEX in group and table.is_legacy(group[INDEX]):
                rows = _with_index_rows(index_table(group, schema).legacy.select(schema.names), episodes)
                _rewrite(root, f"{group_name}/{name}/{INDEX}", schema, rows)
                counts["labels" if group_name == LABELS_GROUP else "curated"] += rows.num_rows
            if SPANS in group and table.is_legacy(group[SPANS]):
                _rewrite(root, f"{group_name}/{name}/{SPANS}", CURATION_SPANS_SCHEMA,
                         table.read_legacy(group[SPANS], CURATION_SPANS_SCHEMA))
    root.attrs["lawam_layout"] = STORE_LAYOUT_VERSION
    return counts


def _with_index_rows(labels: pa.Table, episodes: EpisodeIndex) -> pa.Table:
    """Layout-1 rows of a derived set (labels, curation) with `index_row`: the row of their
    episode when its content hash is still the one they were computed from (-1 otherwise: stale)."""
    rows = np.full(labels.num_rows, -1, np.int64)
    if episodes.rows:
        keys = episode_index.episode_keys(episodes.column("source"), episodes.column("episode_id"))
        at = pc.index_in(labels["key"], value_set=keys)
        same = pc.equal(episodes.column("content_hash").take(at.fill_null(0)), labels["content_hash"])
        same = pc.and_(pc.is_valid(at), same).to_numpy(zero_copy_only=False)
        rows = np.where(same, at.fill_null(-1).to_numpy(zero_copy_only=False), -1)
    return labels.set_column(labels.schema.get_field_index("index_row"), "index_row", pa.array(rows, pa.int64()))


def migrate_if_needed(uri: str, repo, branch: str) -> str | None:
    """Migrate the tip of `branch` to this layout in a commit of its own if it is older; returns
    the new version (None when nothing was to do). Call with the writer lock held."""
    if branch not in repo.list_branches():
        return None
    session = repo.writable_session(branch)
    try:
        root = zarr.open_group(session.store, mode="r+")
    except (zarr.errors.GroupNotFoundError, FileNotFoundError):
        return None
    attrs = dict(root.attrs)
    if not needs_migration(attrs):
        return None
    counts = migrate_root(root, repo, session.snapshot_id)
    version = session.commit(f"migrate the store to layout {STORE_LAYOUT_VERSION}",
                             metadata={"lawam_migrate": f"{attrs['lawam_layout']}->{STORE_LAYOUT_VERSION}"})
    log.warning("store %s: migrated from layout %s to %s in version %s (%d episode rows, %d files, %d label rows, "
                "%d curation rows)", uri, attrs["lawam_layout"], STORE_LAYOUT_VERSION, version, counts["episodes"],
                counts["files"], counts["labels"], counts["curated"])
    try:
        sync_catalog_file(uri, EpisodeIndex(zarr.open_group(repo.readonly_session(snapshot_id=version).store,
                                                           mode="r"), repo, version), version)
    except OSError as e:
        log.warning("could not write catalog.parquet: %s (the next run rewrites it)", e)
    return version

