"""Content hashes of source files: what tells an incremental ingest that an episode changed.

Promise: a file's digest changes whenever its bytes change (same size included), and
stays equal while they do not, so a no-op refresh re-does nothing and a rewritten video
is re-done.

Strategy, and why:

- **Local files:** sha256 of the whole file, memoised in-process per
  `(path, size, mtime_ns, ctime_ns, inode)`. Hashing every byte is the only check that
  cannot miss an edit, and it is cheap next to an ingest (sha256 runs at ~1 GB/s; a
  10 s 480p clip is ~2 MB, i.e. ~2 ms against seconds of decode + encode), so even a
  fresh process doing a no-op refresh stays far below the 2% budget. The memo makes a
  second look in the same process (e.g. many LeRobot v3.0 episodes sharing one mp4,
  many demos in one HDF5 file) a `stat()`.
- **Racy stat:** a file modified in the last `RACY_WINDOW_S` seconds is never memoised
  (the "racy git" rule): filesystem timestamps are coarse (ext4: a few ms), so a rewrite
  of equal size right after a read could otherwise keep the same stat key and be missed.
- **Remote files (fsspec URLs):** the object store's own content checksum from
  `fs.info()` (S3 `ETag`, GCS `md5Hash`/`crc32c`, ...) plus the size — one metadata
  request, no download. Only when the store gives none are the bytes read and hashed
  (memoised like local files, on size + mtime when the store reports one).

Trade-off accepted: a `touch` without a content change costs one re-hash, never a re-ingest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import fsspec

from pipeline.uri import is_remote, local_path

log = logging.getLogger(__name__)

RACY_WINDOW_S = 2.0  # files modified this recently are re-hashed on every call
_BLOCK = 1 << 20  # read size while hashing
# Checksum fields object stores put in `fs.info()`, most specific first.
_REMOTE_CHECKSUM_KEYS = ("sha256", "ChecksumSHA256", "md5Hash", "crc32c", "ETag", "etag", "checksum")

_memo: dict[tuple[Any, ...], str] = {}
_memo_lock = threading.Lock()


def _sha256_stream(f: Any) -> str:
    h = hashlib.sha256()
    while block := f.read(_BLOCK):
        h.update(block)
    return h.hexdigest()


def _local_digest(path: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    key = ("local", os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    with _memo_lock:
        hit = _memo.get(key)
    if hit is not None:
        return hit
    with open(path, "rb") as f:
        digest = "sha256:" + _sha256_stream(f)
    if time.time() - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > RACY_WINDOW_S:
        with _memo_lock:
            _memo[key] = digest
    return digest


def _remote_digest(uri: str, info: Mapping[str, Any] | None) -> str:
    fs, path = fsspec.core.url_to_fs(uri)
    if info is None:
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return "missing"
    size = info.get("size")
    for k in _REMOTE_CHECKSUM_KEYS:
        v = info.get(k)
        if v:
            return f"{k}:{str(v).strip(chr(34))}:{size}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") or info.get("created")
    key = ("remote", uri, size, str(mtime)) if mtime is not None else None
    if key is not None:
        with _memo_lock:
            hit = _memo.get(key)
        if hit is not None:
            return hit
    with fs.open(path, "rb") as f:
        digest = "sha256:" + _sha256_stream(f)
    if key is not None:
        with _memo_lock:
            _memo[key] = digest
    return digest


def file_digest(uri: str, info: Mapping[str, Any] | None = None) -> str:
    """A string that changes when the file's bytes change; `"missing"` if it does not exist.

    `info` is an optional fsspec `info()`/`find(detail=True)` entry already at hand, so
    enumerating a remote folder costs no extra request per file.
    """
    if is_remote(uri):
        return _remote_digest(uri, info)
    return _local_digest(local_path(uri))


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
    """Forget memoised digests (tests; long-lived workers that want a full re-check)."""
    with _memo_lock:
        _memo.clear()
