"""Sources that pack many episodes per file: RLDS TFRecord shards and webdataset tars.

Promise: a refresh over unchanged shards reads none of them; a new or changed shard is the
only one read, once, record by record (memory: one record or member, whatever its size).

How: enumerating a shard means knowing where each episode is inside it (byte offsets, its id,
its step count, its instruction). An adapter finds that out by walking the shard once
(`shard_rows(..., scan)`), and the result is remembered with the shard's content digest
(`hashing.remember_records`): it is committed in the shard's row of the store's `/files`
table, and a later refresh, in any process, whose stat identity check says the shard is
unchanged gets its rows back without opening it.

Why there, and not in a table of its own or a cache folder: the rows describe exactly the
bytes that the `/files` row's digest names, so they live and die with it — replaced when the
shard changes, dropped when it disappears, versioned with the episodes they produced (a
version of the store says where its episodes came from). A cache folder would be per machine
(a fresh worker or a CI clone would re-read every shard) and could disagree with the store; a
separate table would need its own rules for staleness and deletion, which `/files` already
has. The cost is a wider row: one short entry per episode, the same order of size as the
episode index itself.

Rows are plain JSON lists, adapter-specific, tagged with the parameters that shaped them (the
instruction field read, for instance): other parameters mean another walk, never stale rows.

Shards are listed from `uri`: a folder (every matching file under it, sorted), a brace pattern
(`shards/{00000..00099}.tar`, expanded by `braceexpand`, the library webdataset uses), or a
list of files; local or any fsspec URL. A shard's name (for episode ids) is its path relative
to the folder (the pattern's fixed folder; for a list, its file name): stable across runs.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fsspec

from pipeline.sources import hashing
from pipeline.sources.base import SourceError
from pipeline.uri import is_remote, join_uri

log = logging.getLogger(__name__)

_ROWS_VERSION = 1  # bump when an adapter's row layout changes: old rows are then walked again


@dataclass(frozen=True)
class Shard:
    name: str  # relative path used in episode ids: stable across runs
    uri: str  # local path or fsspec URL
    info: dict[str, Any] | None = None  # fsspec listing entry (remote), so hashing needs no request


def _has_braces(uri: str) -> bool:
    return "{" in uri and "}" in uri


def list_shards(uri: str | list[str], *, match: Callable[[str], bool], what: str) -> list[Shard]:
    """Every shard of the source, sorted by name. `match(file name)` picks the shard files of a
    folder; `what` names them in errors ("TFRecord shards")."""
    if isinstance(uri, list):
        shards = [Shard(posixpath.basename(u.rstrip("/")), u) for u in uri]
        names = [s.name for s in shards]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SourceError(f"uri: the listed shards {dup!r} share a file name; episode ids are "
                              "shard name + key, so give them distinct names or put them in one folder")
        return sorted(shards, key=lambda s: s.name)
    if _has_braces(uri):
        import braceexpand

        fixed = uri[: uri.index("{")]
        base = fixed[: fixed.rfind("/") + 1] if "/" in fixed else ""
        shards = [Shard(u[len(base):], u) for u in braceexpand.braceexpand(uri)]
        if not shards:
            raise SourceError(f"uri: the pattern {uri!r} names no file")
        return sorted(shards, key=lambda s: s.name)
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.isdir(path):
        raise SourceError(f"{uri}: no such folder; set `uri` to the folder holding the {what}")
    base = path.rstrip("/")
    found = fs.find(base, detail=True)
    shards = []
    for p, info in sorted(found.items()):
        rel = p[len(base):].lstrip("/")
        if match(posixpath.basename(rel)):
            shards.append(Shard(rel, join_uri(uri, rel), info if is_remote(uri) else None))
    if not shards:
        raise SourceError(f"{uri}: no {what} in this folder")
    return shards


def shard_rows(shard: Shard, digest: str, params: str, scan: Callable[[], list[list[Any]]]) -> list[list[Any]]:
    """The shard's rows (one per episode, as `scan` makes them) for this digest and these
    parameters: remembered ones when the shard is unchanged, else `scan()` walks it once and
    the result is remembered (and committed with the next store commit)."""
    tag = f"{_ROWS_VERSION}:{params}"
    text = hashing.remembered_records(shard.uri, digest)
    if text is not None:
        try:
            kept = json.loads(text)
        except ValueError:
            kept = None
        if isinstance(kept, dict) and kept.get("params") == tag and isinstance(kept.get("rows"), list):
            return kept["rows"]
    log.info("%s: reading the shard for its episodes", shard.uri)
    rows = scan()
    hashing.remember_records(shard.uri, digest, json.dumps({"params": tag, "rows": rows}, separators=(",", ":")))
    return rows
