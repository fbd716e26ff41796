"""`webdataset` sources: tar shards as video2dataset and cosmos-curate write them.

A shard is a tar of samples, each a group of members sharing a key (`000123.mp4`,
`000123.json`, `000123.txt`), grouped as the webdataset convention says (the library's own
`group_by_keys` and `base_plus_ext`: the key is the member name up to the first dot of its
file name). `uri` is a folder of `.tar` files (found recursively), a brace pattern
(`shards/{00000..01023}.tar`, expanded by `braceexpand`) or a list of shards; local or fsspec.
The `.parquet` and `_stats.json` video2dataset writes beside each shard are not needed.

- **One episode per sample**: its video member (`mp4`, `webm`, `mkv`, `mov`, `avi`, `m4v`; or
  the suffix named in `cameras`, e.g. `wrist.mp4`, one stream per camera) is decoded straight
  from the tar: `EpisodeRef.byte_range` is the member's bytes, which PyAV reads in place
  (`pipeline.uri.open_range`); nothing is extracted, so a member named `../x` or `/etc/x` never
  touches the filesystem (and its sample is quarantined, its key never reaching the catalog).
- **Instruction**: the `.txt` member, or with `instruction_field` that field of the `.json`
  member (a dotted path: `caption`, `windows.0.caption`), else the source's `instruction`.
- **Episode id** = shard name (without `.tar`) + `/` + key: stable across runs.
- **Change detection per shard**: a new or changed shard is walked once, header by header
  (member data is skipped, only `.txt`/`.json` members are read) and its samples remembered
  with its digest (`pipeline.sources.shards`): a refresh over unchanged shards opens none.
  The `webdataset` library is imported only for such a walk: importing it imports torch
  (seconds and ~700 MB), which a no-op refresh and the decode workers must not pay.

Bad input, one line each: a shard that is not a tar is one quarantined episode named after the
shard; a shard cut inside a member quarantines that member's sample, naming shard and key, and
the samples before it ingest; a shard that ends without tar's end-of-archive marker quarantines
its last sample (it may have lost members); a sample without a video member is quarantined.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
import tarfile
from collections.abc import Iterator
from typing import Any

from pipeline.sources.base import EpisodeRef, SourceError, reraise_if_infrastructure
from pipeline.sources.hashing import combine, file_digest
from pipeline.sources.shards import Shard, list_shards, shard_rows
from pipeline.uri import open_uri
from schemas.config import SourceSpec

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = ("mp4", "webm", "mkv", "mov", "avi", "m4v")
_TEXT_SUFFIXES = ("txt", "json")
_TEXT_LIMIT = 1 << 20  # .txt / .json members larger than this are not read while enumerating
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's own metadata members (skipped by the library too)
_BLOCK = 512


class _Member:
    """A media member, located: its data are bytes [offset, offset + size) of the shard."""

    def __init__(self, name: str, offset: int, size: int, cut: bool = False):
        self.name, self.offset, self.size, self.cut = name, offset, size, cut


def _unsafe(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or "\x00" in name or bool(re.match(r"^[A-Za-z]:", name))


def _members(tar: tarfile.TarFile, uri: str, size: int) -> Iterator[dict[str, Any]]:
    """The shard's regular members as webdataset's tar iterators yield them ({fname, data,
    __url__}), with media members as `_Member`s (located, not read). Stops at a cut member."""
    from webdataset.tariterators import base_plus_ext

    for m in tar:
        tar.members = []  # one header at a time, whatever the shard's length
        if not m.isreg() or _META.match(m.name):
            continue
        cut = m.offset_data + m.size > size
        suffix = base_plus_ext(m.name)[1] or ""
        if not cut and suffix.lower().rsplit(".", 1)[-1] in _TEXT_SUFFIXES and m.size <= _TEXT_LIMIT:
            f = tar.extractfile(m)
            data: Any = f.read() if f is not None else b""
        else:
            data = _Member(m.name, m.offset_data, m.size, cut)
        yield {"fname": m.name, "data": data, "__url__": uri}
        if cut:
            return


def _field(doc: Any, path: str) -> str | None:
    for part in path.split("."):
        if isinstance(doc, dict):
            doc = doc.get(part)
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return None
    return None if doc is None else str(doc).strip() or None


def _instruction(sample: dict[str, Any], field: str | None) -> str | None:
    if field:
        raw = sample.get("json")
        if isinstance(raw, bytes):
            try:
                return _field(json.loads(raw), field)
            except ValueError:
                return None
        return None
    txt = sample.get("txt")
    return txt.decode("utf-8", "replace").strip() or None if isinstance(txt, bytes) else None


def _scan(shard: Shard, instruction_field: str | None) -> list[list[Any]]:
    """Walk the shard's headers: one row [key, {suffix: [offset, size], or None for a member that
    was read (.txt, .json)}, instruction, fault] per sample; key None when the fault is the whole
    shard's."""
    from webdataset.tariterators import group_by_keys  # imported here: `webdataset` imports torch

    rows: list[list[Any]] = []
    duplicates: list[str] = []

    def note(e: Exception) -> bool:  # webdataset's handler protocol: True = go on
        duplicates.append(str(e).split(":", 1)[0])
        return True

    try:
        with open_uri(shard.uri, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            try:
                tar = tarfile.open(fileobj=f, mode="r:")  # noqa: SIM115 - f is closed by the with above
            except tarfile.TarError as e:
                return [[None, {}, None, f"not a tar archive ({e})"]]
            samples = list(group_by_keys(_members(tar, shard.uri, size), handler=note))
            f.seek(tar.offset)
            block = f.read(_BLOCK)
    except FileNotFoundError:
        return [[None, {}, None, "the shard does not exist (listed, then deleted?)"]]
    except OSError as e:
        reraise_if_infrastructure(e)
        return [[None, {}, None, f"unreadable ({e.strerror or e})"]]
    for name in duplicates:
        log.warning("%s: member %s appears twice in its sample; the first one is kept", shard.uri, name)
    for sample in samples:
        key = sample["__key__"]
        media = {k: v for k, v in sample.items() if isinstance(v, _Member)}
        cut = next((m.name for m in media.values() if m.cut), None)
        fault = None
        if _unsafe(key):
            fault = f"member name {key!r} leaves the shard (absolute or '..'); never extracted"
        elif cut is not None:
            fault = f"truncated: the shard ends inside member {cut}"
        members = {k: ([v.offset, v.size] if isinstance(v, _Member) else None) for k, v in sample.items()
                   if not k.startswith("__")}
        rows.append([key, members, _instruction(sample, instruction_field), fault])
    clean_end = len(block) == _BLOCK and not any(block)
    if rows and rows[-1][3] is None and not clean_end:
        rows[-1][3] = "the shard ends without tar's end-of-archive marker after this sample (truncated?); it " \
                      "may have lost members"
    return rows


def _video_suffix(members: dict[str, list | None], camera: str | None) -> str | None:
    if camera:
        return camera if members.get(camera) else None
    return next((s for s in VIDEO_SUFFIXES if members.get(s)), None)


def iter_webdataset(spec: SourceSpec) -> Iterator[EpisodeRef]:
    """One EpisodeRef per sample of every shard, shards in name order, samples in tar order."""
    shards = list_shards(spec.uri, match=lambda n: n.endswith(".tar"), what=".tar shards")
    camera = spec.cameras[0].lstrip(".").lower() if spec.cameras else None
    params = combine(spec.instruction_field)
    for i, shard in enumerate(shards):
        digest = file_digest(shard.uri, shard.info)
        name = shard.name.removesuffix(".tar")
        if digest == "missing":
            rows = [[None, {}, None, "the shard does not exist (listed, then deleted?)"]]
        else:
            rows = shard_rows(shard, digest, params, lambda s=shard: _scan(s, spec.instruction_field))
        if camera and i == 0 and rows and rows[0][0] is not None and not any(camera in r[1] for r in rows):
            have = sorted({s for r in rows for s, where in r[1].items() if where})
            raise SourceError(f"{shard.uri}: no sample has a member .{camera} (camera {spec.cameras[0]!r}); "
                              f"media members: {have!r}")
        for key, members, text, fault in rows:
            if key is None:
                yield EpisodeRef(source=spec.id, episode_id=name, kind=spec.kind, uri=shard.uri,
                                 content_hash=combine(digest), format="webdataset", refused=f"{shard.name}: {fault}")
                continue
            suffix = _video_suffix(members, camera)
            if fault is None and suffix is None:
                fault = (f"no video member .{camera}" if camera else "no video member") + \
                        f" (its members: {', '.join(sorted(members)) or 'none'})"
            safe_key = key if not _unsafe(key) else "refused-" + hashlib.sha256(key.encode()).hexdigest()[:12]
            offset, size = members.get(suffix, [0, 0]) if suffix else [0, 0]
            yield EpisodeRef(
                source=spec.id, episode_id=f"{name}/{safe_key}", kind=spec.kind, uri=shard.uri,
                content_hash=combine(digest, key, suffix), camera=suffix, instruction=text or spec.instruction,
                byte_range=(int(offset), int(size)), format="webdataset",
                refused=None if fault is None else f"{shard.name} sample {posixpath.basename(safe_key)}: {fault}",
            )
