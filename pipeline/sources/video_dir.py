"""`video_dir` sources: a folder of video files, optionally described by a manifest.

This is how human / egocentric collections arrive. Enumeration lists the folder (or reads
the manifest) and hashes files; it never opens a container, so a zero-byte or non-video
file is still yielded and the decoder quarantines it with its own reason.

Manifest rules (CSV or JSONL, path relative to the folder unless absolute / a URL):

- `file` (required): path relative to the folder. `instruction` (or the column named by
  `spec.instruction_field`), `split`, and a segment `start_s`/`end_s` (or `start`/`end`),
  in seconds, are optional.
- With a manifest, **only the files it lists are episodes** — a manifest is how a user
  curates a folder (drops bad clips, cuts segments), so unlisted files are ignored.
- A listed file that does not exist is still yielded (content hash `missing`), so the
  ingest quarantines it as a missing file instead of the source silently shrinking.
- episode_id = the relative path, plus `@<start>-<end>` for a segment: stable across runs
  and unique as long as the manifest does not list the same segment twice (that is a
  SourceError, since it is ambiguous which row's instruction to use).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import fsspec

from pipeline.sources.base import EpisodeRef, SourceError
from pipeline.sources.hashing import combine, file_digest
from pipeline.uri import is_remote, join_uri, open_uri
from schemas.config import SourceSpec

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v"})
_START_KEYS = ("start_s", "start")
_END_KEYS = ("end_s", "end")


def is_video_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _list_videos(root: str) -> dict[str, dict[str, Any] | None]:
    """Relative POSIX path → fsspec info (remote) or None (local), for every video under root.

    Lists only the source's own folder (recursively), never a whole bucket."""
    found: dict[str, dict[str, Any] | None] = {}
    if is_remote(root):
        fs, base = fsspec.core.url_to_fs(root)
        if not fs.isdir(base):
            raise SourceError(f"{root}: not a folder; set `uri` to the folder holding the videos")
        base = base.rstrip("/")
        for path, info in fs.find(base, detail=True).items():
            rel = path[len(base) :].lstrip("/")
            if is_video_name(rel):
                found[rel] = info
        return found
    if not os.path.isdir(root):
        raise SourceError(f"{root}: no such folder; set `uri` to the folder holding the videos")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if is_video_name(name):
                rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                found[rel] = None
    return found


def _read_manifest(uri: str) -> list[dict[str, Any]]:
    try:
        with open_uri(uri, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except (FileNotFoundError, IsADirectoryError):
        raise SourceError(f"{uri}: manifest not found; fix `manifest` (relative to the folder)") from None
    ext = os.path.splitext(uri)[1].lower()
    if ext in (".jsonl", ".ndjson", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SourceError(f"{uri}: line {n} is not JSON ({e.msg}); one JSON object per line") from None
            if not isinstance(row, dict):
                raise SourceError(f"{uri}: line {n} is not a JSON object; one object per line")
            rows.append(row)
        return rows
    if ext in (".csv", ".tsv"):
        return list(csv.DictReader(io.StringIO(text), delimiter="\t" if ext == ".tsv" else ","))
    raise SourceError(f"{uri}: unknown manifest type {ext!r}; use .csv or .jsonl")


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def _seconds(row: dict[str, Any], keys: tuple[str, ...], where: str) -> float | None:
    for k in keys:
        v = row.get(k)
        if not _blank(v):
            try:
                out = float(v)
            except (TypeError, ValueError):
                raise SourceError(f"{where}: {k}={v!r} is not a number of seconds") from None
            if not math.isfinite(out) or out < 0:
                raise SourceError(f"{where}: {k}={v!r} must be a finite number of seconds >= 0")
            return out
    return None


def _segment_id(rel: str, start: float | None, end: float | None) -> str:
    if start is None and end is None:
        return rel
    return f"{rel}@{start or 0:g}-{'' if end is None else format(end, 'g')}"


def iter_video_dir(spec: SourceSpec) -> Iterator[EpisodeRef]:
    """Episodes of a folder of videos, sorted by relative path (manifest order with one)."""
    root = spec.uri
    if spec.manifest is None:
        for rel, info in sorted(_list_videos(root).items()):
            uri = join_uri(root, rel)
            yield EpisodeRef(
                source=spec.id,
                episode_id=rel,
                kind=spec.kind,
                uri=uri,
                content_hash=combine(file_digest(uri, info)),
                camera=spec.cameras[0] if spec.cameras else None,
                instruction=spec.instruction,
            )
        return
    yield from _iter_manifest(spec)


def _iter_manifest(spec: SourceSpec) -> Iterator[EpisodeRef]:
    root = spec.uri
    assert spec.manifest is not None
    manifest = (
        spec.manifest if ("://" in spec.manifest or os.path.isabs(spec.manifest)) else join_uri(root, spec.manifest)
    )
    rows = _read_manifest(manifest)
    field = spec.instruction_field or "instruction"
    if rows and "file" not in rows[0]:
        raise SourceError(f"{manifest}: no `file` column (got {sorted(rows[0])!r}); add one with relative paths")
    if spec.instruction_field and rows and not any(spec.instruction_field in r for r in rows):
        raise SourceError(
            f"{manifest}: instruction_field {spec.instruction_field!r} is not a column; got {sorted(rows[0])!r}"
        )
    # Remote: one listing of the folder gives every file's checksum; no request per file.
    infos = _list_videos(root) if is_remote(root) else {}
    seen: set[str] = set()
    for n, row in enumerate(rows, 1):
        where = f"{manifest}: row {n}"
        rel = row.get("file")
        if _blank(rel):
            raise SourceError(f"{where}: empty `file`; every row needs the video's relative path")
        rel = str(rel).strip().replace("\\", "/")
        while rel.startswith("./"):
            rel = rel[2:]
        start, end = _seconds(row, _START_KEYS, where), _seconds(row, _END_KEYS, where)
        if start is not None and end is not None and end <= start:
            raise SourceError(f"{where}: end {end} <= start {start}; a segment needs end > start")
        episode_id = _segment_id(rel, start, end)
        if episode_id in seen:
            raise SourceError(f"{where}: {episode_id!r} is listed twice; keep one row per file/segment")
        seen.add(episode_id)
        uri = join_uri(root, rel)
        digest = file_digest(uri, infos.get(rel))
        if digest == "missing":
            log.warning("%s: %s does not exist; yielded so the ingest quarantines it", where, uri)
        instruction = row.get(field)
        split = row.get("split")
        yield EpisodeRef(
            source=spec.id,
            episode_id=episode_id,
            kind=spec.kind,
            uri=uri,
            content_hash=combine(digest, start, end),
            camera=spec.cameras[0] if spec.cameras else None,
            start_s=start or 0.0,
            end_s=end,
            instruction=spec.instruction if _blank(instruction) else str(instruction).strip(),
            split=None if _blank(split) else str(split).strip(),
        )
