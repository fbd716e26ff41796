"""`video_dir` sources: a folder of video files, optionally described by a manifest.

This is how human / egocentric collections arrive. Enumeration lists the folder (or reads
the manifest) and hashes files; it never opens a container, so a zero-byte or non-video
file is still yielded and the decoder quarantines it with its own reason.

Manifest rules (CSV, JSONL, or a JSON array of objects):

- `file` (required): path relative to the folder. `instruction` (or the column named by
  `spec.instruction_field`), `split`, and a segment `start_s`/`end_s` (or `start`/`end`),
  in seconds or `[HH:]MM:SS[.ff]`, are optional.
- **Manifests as collections publish them** are read untouched through `spec.columns`, which
  maps our fields (`file`, `start`, `end`, `split`, `id`) onto the collection's columns; `file`
  and `id` may be `{column}` templates. EPIC-KITCHENS-100's CSV:
  `{file: "{participant_id}/videos/{video_id}.MP4", start: start_timestamp, end: stop_timestamp,
  id: narration_id}` with `instruction_field: narration`; Something-Something v2's JSON:
  `{file: "{id}.webm", id: id}` with `instruction_field: label`. A column a mapping names that
  the manifest lacks is a SourceError listing the columns it has.
- With a manifest, **only the files it lists are episodes** — a manifest is how a user
  curates a folder (drops bad clips, cuts segments), so unlisted files are ignored.
- A row must stay inside the folder: `../x.mp4`, an absolute path or URL, or a symlink
  whose target lies outside the folder is never opened, not even hashed. Such a row, and
  a row naming a file that does not exist, is still yielded, as a refused ref
  (`EpisodeRef.refused` says why), so the ingest quarantines it with a one-line reason
  instead of the source silently shrinking — or reading whatever the row points at.
  A row refused for its path as written is keyed `refused-<hash of the path>`, so no `..`
  reaches the catalog. Without a manifest, a listed symlink pointing out is refused too.
  There is deliberately no switch to allow outside paths: a source is its folder (its
  hashes, its keys, what a config reviewer sees), so point `uri` at a folder that holds
  every file — a folder of symlinks into a shared pool is the one layout this refuses.
- episode_id = the relative path (normalised: `a/./b/../c.mp4` is `a/c.mp4`), plus
  `@<start>-<end>` for a segment: stable across runs and unique as long as the manifest
  does not list the same segment twice (that is a SourceError, since it is ambiguous
  which row's instruction to use). With `columns.id`, the collection's own id (EPIC's
  `narration_id`, SSv2's `id`) instead, when it is a safe relative name.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import re
from collections.abc import Iterator
from typing import Any

import fsspec

from pipeline.sources.base import EpisodeRef, SourceError
from pipeline.sources.hashing import combine, file_digest
from pipeline.uri import is_remote, join_uri, local_path, open_uri
from schemas.config import SourceSpec

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v"})
_START_KEYS = ("start_s", "start")
_END_KEYS = ("end_s", "end")
_MISSING = "does not exist in the source folder"
_DRIVE = re.compile(r"^[A-Za-z]:/")  # C:\clips\x.mp4 (backslashes made slashes) is absolute too


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
    except UnicodeDecodeError as e:
        raise SourceError(f"{uri}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    ext = os.path.splitext(uri)[1].lower()
    if ext == ".json" and text.lstrip().startswith("["):  # one JSON array of objects (SSv2's labels)
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise SourceError(f"{uri}: not valid JSON ({e.msg} at line {e.lineno}); a JSON array of objects") from None
        bad = next((i for i, r in enumerate(rows, 1) if not isinstance(r, dict)), None)
        if bad is not None:
            raise SourceError(f"{uri}: item {bad} is not a JSON object; a JSON array of objects")
        return rows
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
        try:
            return list(csv.DictReader(io.StringIO(text), delimiter="\t" if ext == ".tsv" else ","))
        except csv.Error as e:
            raise SourceError(f"{uri}: not a readable CSV ({e}); one row per file, a `file` column") from None
    raise SourceError(f"{uri}: unknown manifest type {ext!r}; use .csv, .tsv, .json or .jsonl")


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


_CLOCK = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")  # [HH:]MM:SS[.ff], EPIC's timestamps


def _to_seconds(v: Any) -> float:
    """A number of seconds, or a clock time `[HH:]MM:SS[.ff]` (EPIC-KITCHENS' `00:01:05.43`)."""
    if isinstance(v, str) and (m := _CLOCK.match(v.strip())):
        h, mnt, sec = m.groups()
        return int(h or 0) * 3600 + int(mnt) * 60 + float(sec)
    return float(v)


def _seconds(row: dict[str, Any], keys: tuple[str, ...], where: str) -> float | None:
    for k in keys:
        v = row.get(k)
        if not _blank(v):
            try:
                out = _to_seconds(v)
            except (TypeError, ValueError):
                raise SourceError(f"{where}: {k}={v!r} is not seconds nor HH:MM:SS.ff") from None
            if not math.isfinite(out) or out < 0:
                raise SourceError(f"{where}: {k}={v!r} must be a finite number of seconds >= 0")
            return out
    return None


_TEMPLATE_FIELD = re.compile(r"{([^{}]*)}")


def _mapped(row: dict[str, Any], spec_value: str, where: str) -> str | None:
    """A row's value for a mapped field: the column `spec_value`, or the `{column}` template
    filled from the row; None when blank."""
    if "{" not in spec_value:
        v = row.get(spec_value)
        return None if _blank(v) else str(v).strip()
    try:
        return spec_value.format_map({k: ("" if _blank(v) else str(v).strip()) for k, v in row.items()})
    except (KeyError, IndexError, ValueError) as e:
        raise SourceError(f"{where}: template {spec_value!r} cannot be filled ({type(e).__name__}: {e})") from None


def _check_columns(manifest: str, first: dict[str, Any], columns: dict[str, str]) -> None:
    """Every column `columns` names (directly or in a template) is in the manifest's first row."""
    have = sorted(first, key=str)
    for field, value in columns.items():
        names = _TEMPLATE_FIELD.findall(value) if "{" in value else [value]
        missing = [n for n in names if n not in first]
        if missing:
            raise SourceError(f"{manifest}: columns.{field} names {missing!r}, not columns of the manifest; "
                              f"it has {have!r}")


def _segment_id(rel: str, start: float | None, end: float | None) -> str:
    if start is None and end is None:
        return rel
    return f"{rel}@{start or 0:g}-{'' if end is None else format(end, 'g')}"


def _escapes(real_root: str, path: str) -> bool:
    """True when the local `path` resolves (through symlinks) to a place outside `real_root`."""
    return os.path.commonpath([real_root, os.path.realpath(path)]) != real_root


def _relative(raw: str) -> tuple[str | None, str | None]:
    """(normalised POSIX path inside the folder, None), or (None, why the path is refused).
    Decided on the text alone: nothing is opened or looked up."""
    rel = raw.strip().replace("\\", "/")
    if "\x00" in rel:
        return None, "has a NUL byte"
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: no file can have this name
        return None, "is not valid Unicode"
    if "://" in rel or rel.startswith("/") or _DRIVE.match(rel):
        return None, "is absolute; manifest paths are relative to the source folder"
    rel = posixpath.normpath(rel)
    if rel == ".." or rel.startswith("../"):
        return None, "leaves the source folder"
    if rel == ".":
        return None, "names the folder itself, not a file"
    return rel, None


def _real_root(root: str) -> str | None:
    """The local folder with every symlink resolved; None for a remote one (no symlinks)."""
    return None if is_remote(root) else os.path.realpath(local_path(root))


def _refusal(root: str, real_root: str | None, rel: str, info: dict[str, Any] | None) -> tuple[str, str | None]:
    """(content digest, why the file cannot be an episode or None). A local file whose real
    path lies outside the folder is refused before it is read."""
    uri = join_uri(root, rel)
    if real_root is not None:
        path = local_path(uri)
        if _escapes(real_root, path):
            return "outside", "is a symlink to a file outside the source folder"
        if not os.path.isfile(path):  # also a name too long, or under a file ('a.mp4/x')
            return ("not-a-file", "is not a file") if os.path.lexists(path) else ("missing", _MISSING)
    try:
        digest = file_digest(uri, info)
    except PermissionError as e:
        return "unreadable", f"cannot be read ({e.strerror})"
    return digest, (_MISSING if digest == "missing" else None)


def _refused_id(raw: str) -> str:
    """Episode id of a row whose path is refused as written: stable, and free of `..`."""
    return "refused-" + hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def iter_video_dir(spec: SourceSpec) -> Iterator[EpisodeRef]:
    """Episodes of a folder of videos, sorted by relative path (manifest order with one)."""
    root = spec.uri
    if spec.manifest is None:
        real_root = _real_root(root)
        for rel, info in sorted(_list_videos(root).items()):
            digest, why = _refusal(root, real_root, rel, info)
            yield EpisodeRef(
                source=spec.id,
                episode_id=rel,
                kind=spec.kind,
                uri=join_uri(root, rel),
                content_hash=combine(digest),
                camera=spec.cameras[0] if spec.cameras else None,
                instruction=spec.instruction,
                refused=None if why is None else f"{rel!r} {why}",
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
    columns = {"file": "file", **spec.columns}
    if rows and "file" not in spec.columns and "file" not in rows[0]:
        raise SourceError(f"{manifest}: no `file` column (got {sorted(rows[0], key=str)!r}); "
                          "add one with relative paths, or map one with `columns: {file: ...}`")
    if rows:
        _check_columns(manifest, rows[0], spec.columns)
    start_keys = (columns["start"],) if "start" in columns else _START_KEYS
    end_keys = (columns["end"],) if "end" in columns else _END_KEYS
    if spec.instruction_field and rows and not any(spec.instruction_field in r for r in rows):
        raise SourceError(f"{manifest}: instruction_field {spec.instruction_field!r} is not a column; "
                          f"got {sorted(rows[0], key=str)!r}")
    # Remote: one listing of the folder gives every file's checksum; no request per file.
    infos = _list_videos(root) if is_remote(root) else {}
    name, real_root = posixpath.basename(manifest.replace("\\", "/")), _real_root(root)
    seen: set[str] = set()
    for n, row in enumerate(rows, 1):
        where = f"{manifest}: row {n}"
        raw = _mapped(row, columns["file"], where)
        if _blank(raw):
            raise SourceError(f"{where}: empty `file`; every row needs the video's relative path")
        raw = str(raw)
        start, end = _seconds(row, start_keys, where), _seconds(row, end_keys, where)
        if start is not None and end is not None and end <= start:
            raise SourceError(f"{where}: end {end} <= start {start}; a segment needs end > start")
        rel, why = _relative(raw)
        if rel is None:  # never looked up, let alone opened: the path is refused as written
            episode_id, uri, digest = _segment_id(_refused_id(raw), start, end), manifest, "refused"
        else:
            episode_id, uri = _segment_id(rel, start, end), join_uri(root, rel)
            digest, why = _refusal(root, real_root, rel, infos.get(rel))
            own = _mapped(row, columns["id"], where) if "id" in columns else None
            if own is not None and _relative(own) == (own, None):  # a safe relative name: the collection's id
                episode_id = own
        if episode_id in seen:
            raise SourceError(f"{where}: {episode_id!r} is listed twice; keep one row per file/segment")
        seen.add(episode_id)
        refused = None if why is None else f"{name} row {n}: path {raw.strip()!r} {why}"
        if refused:
            log.warning("%s: path %r %s; yielded so the ingest quarantines it", where, raw.strip(), why)
        instruction = row.get(field)
        split = _mapped(row, columns["split"], where) if "split" in columns else row.get("split")
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
            refused=refused,
        )
