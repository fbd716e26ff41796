"""The store's memory of its source files: `/files`, the table behind change detection.

Promise: a refresh in a fresh process re-reads only the files whose stat identity changed
(`pipeline.sources.hashing`), and remembering costs what changed. `/files` is an append-only
table (`pipeline.store.table`) of FILES_SCHEMA — a file's stat identity beside its content
digest, one live row per uri — committed in the same snapshot as the episodes hashed from those
files, so a version's digests describe exactly its episodes. `committed_files` reads it before a
refresh enumerates its sources (a hint: trusted only while a file's identity is unchanged);
the writer stages new or changed records and files gone from a source in a `FileMemory`, which
appends them (and marks the rows they replace) in the writer's next commit.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from pipeline.store import table
from pipeline.store.index import committed_root
from schemas.tables import FILES_SCHEMA

FILES_GROUP = "files"


def files_table(root: zarr.Group) -> table.Table:
    return table.Table(root.get(FILES_GROUP), FILES_SCHEMA)


def read_files(root: zarr.Group) -> pa.Table:
    """The live rows of the store's `files` table; empty for stores written before it existed."""
    return files_table(root).read()


def committed_files(uri: str, branch: str = "main") -> pa.Table:
    """The `files` table of the branch's newest commit, read without taking the writer lock;
    empty when there is no store (or branch) yet."""
    root = committed_root(uri, branch)
    return FILES_SCHEMA.empty_table() if root is None else read_files(root)


def _comparable(col: pa.Array, field: pa.Field) -> pa.Array:
    """A column as stored and read back: null numbers are 0, null strings ""."""
    return col.fill_null("" if pa.types.is_string(field.type) else 0)


class FileMemory:
    """The writer's view of `/files`: the committed rows (read on first use) and the changes
    staged for its next commit."""

    def __init__(self, root: zarr.Group):
        self._table = files_table(root)
        self._live: pa.Table | None = None
        self._rows: np.ndarray | None = None  # stored row of each live row
        self.staged: dict[str, dict] = {}  # uri -> FILES_SCHEMA row for the next commit
        self.forgotten: set[str] = set()  # uris whose row the next commit drops
        self.trusted_changes = 0  # staged rows a later run could trust
        self.trusted_bytes = 0  # ... and the bytes of those files: what they spare a later refresh

    @property
    def committed(self) -> pa.Table:
        """The live `files` rows of the writer's parent commit."""
        if self._live is None:
            self._rows = self._table.live()
            self._live = self._table.read(rows=self._rows)
        return self._live

    @property
    def pending(self) -> bool:
        return bool(self.staged or self.forgotten)

    def remember(self, records: Iterable) -> int:
        """Stage `records` (`hashing.FileRecord`s, or mappings with the FILES_SCHEMA fields) that
        differ from the committed rows; returns how many. Records whose `trusted()` is False
        (racy: hashed right after a write) are staged but never counted as trusted."""
        recs = list(records)
        rows = [{name: row.get(name) for name in FILES_SCHEMA.names}
                for row in (r._asdict() if hasattr(r, "_asdict") else dict(r) for r in recs)]
        if not rows:
            return 0
        new = pa.Table.from_pylist(rows, schema=FILES_SCHEMA)
        old = self.committed
        if old.num_rows:
            at = pc.index_in(new["uri"], value_set=old["uri"])
            same, idx = pc.is_valid(at), at.fill_null(0)
            for field in FILES_SCHEMA:
                if field.name != "uri":
                    same = pc.and_(same, pc.equal(_comparable(old[field.name].take(idx), field),
                                                  _comparable(new[field.name], field)))
            changed = np.flatnonzero(~same.to_numpy(zero_copy_only=False))
        else:
            changed = np.arange(len(rows))
        for i in changed.tolist():
            row = rows[i]
            self.staged[row["uri"]] = row
            if getattr(recs[i], "trusted", lambda: True)():
                self.trusted_changes += 1
                self.trusted_bytes += row["size"] or 0
        return len(changed)

    def forget(self, under: Iterable[str], seen: Iterable[str]) -> int:
        """Stage dropping the rows of files under the source roots `under` (each enumerated whole
        by this run) that are not in `seen`: deleted, or no longer part of their source. Returns
        how many."""
        roots = tuple(r.rstrip("/") + "/" for r in under)
        if not roots or not self.committed.num_rows:
            return 0
        uris = self.committed["uri"]
        inside = functools.reduce(pc.or_, (pc.starts_with(uris, r) for r in roots))  # or_ takes two at a time
        seen_now = pa.array(list(set(seen) | set(self.staged)), pa.string())
        gone = pc.and_(inside, pc.invert(pc.is_in(uris, value_set=seen_now)))
        lost = set(uris.filter(gone).to_pylist())
        self.forgotten |= lost
        return len(lost)

    def write(self, root: zarr.Group) -> None:
        """Append the staged rows to `/files` in the writer's session, superseding the rows they
        replace and those of forgotten files."""
        if not self.pending:
            return
        staged = [r for uri, r in self.staged.items() if uri not in self.forgotten]
        new = pa.Table.from_pylist(staged, schema=FILES_SCHEMA)
        old = self.committed
        drop = pa.array(list({r["uri"] for r in staged} | self.forgotten), pa.string())
        replaced = self._rows[pc.is_in(old["uri"], value_set=drop).to_numpy(zero_copy_only=False)]
        table.append(root.require_group(FILES_GROUP), FILES_SCHEMA, new, replaced)
