"""Where a thing lives: a local path, or an fsspec URL (s3://, gs://, memory://, ...).

The one place the pipeline tells the two apart. Local paths (and `file://` URLs) go
straight to the OS — real file handles, no fsspec overhead; anything else goes through
fsspec, which never downloads a whole object to read part of it. `open_range` makes a byte
range of either a file of its own: how a tar member is read in place.
"""

from __future__ import annotations

import io
import os
from typing import IO

import fsspec


def is_remote(uri: str) -> bool:
    """True for fsspec URLs other than `file://`."""
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> str:
    """`file:///x` → `/x`; plain paths unchanged."""
    return uri.removeprefix("file://")


def join_uri(root: str, rel: str) -> str:
    """`rel` (a POSIX relative path) under `root`, a local folder or an fsspec URL."""
    if "://" in root:
        return root.rstrip("/") + "/" + rel.lstrip("/")
    return os.path.join(root, *rel.split("/"))


def open_uri(uri: str, mode: str = "rb") -> IO:
    """Open a local path or fsspec URL for reading or writing."""
    if not is_remote(uri):
        return open(local_path(uri), mode)  # noqa: SIM115 - returned to the caller
    return fsspec.open(uri, mode).open()


class _RangeReader(io.RawIOBase):
    """Bytes [offset, offset + length) of an open binary file, as a seekable read-only file of
    their own: position 0 is `offset`, EOF is `offset + length`. Closing it closes the file."""

    def __init__(self, f: IO, offset: int, length: int):
        super().__init__()
        self._f, self._start, self._len, self._pos = f, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._len}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buf) -> int:  # noqa: ANN001 - any writable buffer
        n = min(len(buf), self._len - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def open_range(uri: str, offset: int, length: int) -> IO[bytes]:
    """Bytes [offset, offset + length) of `uri` (local path or fsspec URL) as a buffered, seekable
    file of their own: a member of a tar shard read in place, never extracted. A file shorter
    than the range reads short (EOF where the file ends), as a truncated member should."""
    return io.BufferedReader(_RangeReader(open_uri(uri, "rb"), offset, length), buffer_size=1 << 16)
