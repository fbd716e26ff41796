"""Content hashes of source files: what tells an incremental ingest that an episode changed.

Promise: a file's digest changes whenever its bytes change (same size included), and
stays equal while they do not, so a no-op refresh re-does nothing and a rewritten video
is re-done.

Strategy, and why:

- **Local files:** sha256 of the whole file, memoised per stat identity
  `(path, size, mtime_ns, ctime_ns, inode)`. Hashing every byte is the only check that
  cannot miss an edit the first time a file is seen; after that the stat identity stands
  for the bytes, as in git's index. The memo is **remembered across runs**: the ingest
  commits every file's identity, digest and hashing time with the episodes (the store's
  `files` table, `schemas.FILES_SCHEMA`) and seeds this memo from it (`seed`) before it
  enumerates, so a scheduled refresh in a fresh process re-reads only files whose identity
  changed — a `stat()` per file instead of reading the corpus (10 TB is ~1.6 h of sha256
  on one core). Keeping `ctime_ns` and the inode in the identity catches a rewrite that
  restores the old mtime (`touch -d`, `cp -p`, some sync tools); the price is a re-hash
  (never a re-ingest) after a `chmod`/`chown`, or on filesystems whose inode numbers are
  not stable across mounts.
- **Racy stat:** an entry hashed within `RACY_WINDOW_S` seconds of the file's last
  modification (mtime or ctime) is never trusted, in this process or a later one (the
  "racy git" rule): filesystem timestamps are coarse (ext4: a few ms), so a rewrite of
  equal size right after a read could otherwise keep the same identity and be missed.
  Records keep `hashed_at`, so a later run can tell.
- **Remote files (fsspec URLs):** the object store's own content checksum from
  `fs.info()` (S3 `ETag`, GCS `md5Hash`/`crc32c`, ...) plus the size — one metadata
  request (or none: the folder listing has it), no download. Only when the store gives
  none are the bytes read and hashed, memoised on size + modification stamp like local
  files.

Every digest this process computed or confirmed is kept as a `FileRecord` (`observed()`)
for the ingest to commit; `hash_stats()` counts the files and bytes actually read.

**Files that hold many episodes** (RLDS TFRecord shards, webdataset tars) need more than a
digest to be enumerated: where each episode lies inside the file. An adapter reads that once
(`remember_records(uri, digest, text)`) and it rides in the same `files` row as the digest
(`FileRecord.records`), keyed by that digest: `remembered_records(uri, digest)` gives it back
in this process or a later one for as long as the file's digest is unchanged, so a refresh
over unchanged shards reads none of them. It lives in the row, not in a table of its own,
because it is valid for exactly the bytes the row identifies: it is written, replaced and
dropped (file gone, `forget_files`) with the digest, and can never outlive or disagree with it.

Trade-off accepted: a `touch` without a content change costs one re-hash, never a re-ingest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import fsspec

from pipeline.uri import is_remote, local_path

log = logging.getLogger(__name__)

RACY_WINDOW_S = 2.0  # files modified this recently before they were hashed are re-hashed next time
_BLOCK = 1 << 20  # read size while hashing
# Checksum fields object stores put in `fs.info()`, most specific first.
_REMOTE_CHECKSUM_KEYS = ("sha256", "ChecksumSHA256", "md5Hash", "crc32c", "ETag", "etag", "checksum")


class FileRecord(NamedTuple):
    """One file version and its digest: a row of the store's `files` table (FILES_SCHEMA).
    Local files fill size/mtime_ns/ctime_ns/inode; remote ones size and `etag` (the store's
    checksum `key:value`, or `mtime:<stamp>` when it gives none)."""

    uri: str  # absolute local path, or the remote URL
    size: int
    mtime_ns: int | None
    ctime_ns: int | None
    inode: int | None
    etag: str | None
    digest: str
    hashed_at_ns: int  # wall clock (ns since the epoch) when the file was stat'ed for hashing; 0: not read
    records: str | None = None  # where the episodes are inside the file (shards only), for this digest

    def trusted(self) -> bool:
        """False for a racy entry: modified within RACY_WINDOW_S of when it was hashed."""
        if self.etag is not None:
            return True  # remote: the store's version token is exact
        last = max(self.mtime_ns or 0, self.ctime_ns or 0)
        return self.hashed_at_ns - last > RACY_WINDOW_S * 1e9

    def key(self) -> tuple[Any, ...]:
        if self.etag is not None:
            return ("remote", self.uri, self.size, self.etag)
        return ("local", self.uri, self.size, self.mtime_ns, self.ctime_ns, self.inode)


_memo: dict[tuple[Any, ...], FileRecord] = {}  # trusted versions: key -> record
_observed: dict[str, FileRecord] = {}  # uri -> the version this process last saw
_stats = {"files": 0, "bytes": 0, "scans": 0}
_records: dict[tuple[str, str], str] = {}  # (uri as the files table spells it, digest) -> records text
_memo_lock = threading.Lock()


def _sha256_stream(f: Any) -> str:
    h = hashlib.sha256()
    n = 0
    while block := f.read(_BLOCK):
        h.update(block)
        n += len(block)
    with _memo_lock:
        _stats["files"] += 1
        _stats["bytes"] += n
    return h.hexdigest()


def _lookup(key: tuple[Any, ...]) -> FileRecord | None:
    with _memo_lock:
        hit = _memo.get(key)
        if hit is not None:
            _observed[hit.uri] = hit
        return hit


def _remember(rec: FileRecord) -> None:
    with _memo_lock:
        _observed[rec.uri] = rec
        if rec.trusted():
            _memo[rec.key()] = rec


def record_uri(uri: str) -> str:
    """How the `files` table spells a file's (or a folder's) URI: local ones as absolute
    paths, object-store URLs as given."""
    return uri if is_remote(uri) else os.path.abspath(local_path(uri))


def _local_digest(path: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    ap = record_uri(path)
    key = ("local", ap, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    hit = _lookup(key)
    if hit is not None:
        return hit.digest
    hashed_at = time.time_ns()
    with open(path, "rb") as f:
        digest = "sha256:" + _sha256_stream(f)
    _remember(FileRecord(ap, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, None, digest, hashed_at))
    return digest


def _remote_digest(uri: str, info: Mapping[str, Any] | None) -> str:
    fs, path = fsspec.core.url_to_fs(uri)
    if info is None:
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return "missing"
    size = int(info.get("size") or 0)
    for k in _REMOTE_CHECKSUM_KEYS:
        v = info.get(k)
        if v:
            tag = f"{k}:{str(v).strip(chr(34))}"
            digest = f"{tag}:{info.get('size')}"
            with _memo_lock:
                # hashed_at 0: nothing was read, the store vouches for the bytes (and the record stays
                # equal across runs, so remembering it changes nothing)
                _observed[uri] = FileRecord(uri, size, None, None, None, tag, digest, 0)
            return digest
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") or info.get("created")
    tag = None if mtime is None else f"mtime:{mtime}"
    if tag is not None:
        hit = _lookup(("remote", uri, size, tag))
        if hit is not None:
            return hit.digest
    hashed_at = time.time_ns()
    with fs.open(path, "rb") as f:
        digest = "sha256:" + _sha256_stream(f)
    if tag is not None:
        _remember(FileRecord(uri, size, None, None, None, tag, digest, hashed_at))
    return digest


def file_digest(uri: str, info: Mapping[str, Any] | None = None) -> str:
    """A string that changes when the file's bytes change; `"missing"` if it does not exist.

    `info` is an optional fsspec `info()`/`find(detail=True)` entry already at hand, so
    enumerating a remote folder costs no extra request per file.
    """
    if is_remote(uri):
        return _remote_digest(uri, info)
    return _local_digest(local_path(uri))


def seed(rows: Iterable[Mapping[str, Any] | FileRecord]) -> int:
    """Trust digests a previous run recorded (rows of the store's `files` table): a file whose
    identity still matches is not read again. Racy entries are ignored. Returns how many were
    taken."""
    n = 0
    with _memo_lock:
        for row in rows:
            rec = row if isinstance(row, FileRecord) else FileRecord(**{k: row.get(k) for k in FileRecord._fields})
            if rec.digest and rec.records:  # keyed by the digest: valid whatever the stat identity
                _records[(rec.uri, rec.digest)] = rec.records
            if rec.digest and rec.hashed_at_ns and rec.trusted():
                _memo[rec.key()] = rec
                n += 1
    return n


def remembered_records(uri: str, digest: str) -> str | None:
    """What `remember_records` was given for this file at this digest, in this process or (through
    the store's `files` table and `seed`) an earlier one; None when the file is new or changed."""
    with _memo_lock:
        return _records.get((record_uri(uri), digest))


def remember_records(uri: str, digest: str, records: str) -> None:
    """Keep `records` (an adapter's index of the episodes inside the file, as text) for the file
    at `digest`: committed with the file's digest, handed back by `remembered_records`."""
    with _memo_lock:
        _records[(record_uri(uri), digest)] = records
        _stats["scans"] += 1


def observed() -> list[FileRecord]:
    """The file versions this process hashed or confirmed since the last `clear_cache()`, one per
    file (the newest), with their remembered records: what the ingest commits to the store's
    `files` table."""
    with _memo_lock:
        return [rec._replace(records=_records.get((rec.uri, rec.digest))) for rec in _observed.values()]


def hash_stats() -> dict[str, int]:
    """Files and bytes actually read for hashing since the last `clear_cache()`, and how many
    shards were read for their records (`scans`: `remember_records` calls)."""
    with _memo_lock:
        return dict(_stats)


def stat_key(uri: str) -> tuple[Any, ...]:
    """A cheap identity of a file's current version (local: size, mtime, ctime, inode; remote:
    the store's metadata), for caches of parsed contents. Not a content hash: two versions
    written within one timestamp tick could share it; use `file_digest` for change detection."""
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(uri)
        info = fs.info(path)
        return tuple(sorted((k, str(v)) for k, v in info.items() if k not in ("name", "type")))
    st = os.stat(local_path(uri))
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def combine(*parts: object) -> str:
    """One stable hex digest (32 chars) of several file digests and episode parameters."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\x00")
    return h.hexdigest()[:32]


def clear_cache() -> None:
    """Forget memoised and observed digests and zero `hash_stats()`: this process then behaves
    like a fresh one (tests; long-lived workers that want a full re-check)."""
    with _memo_lock:
        _memo.clear()
        _observed.clear()
        _records.clear()
        _stats.update(files=0, bytes=0, scans=0)
