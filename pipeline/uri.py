"""Where a thing lives: a local path, or an fsspec URL (s3://, gs://, memory://, ...).

The one place the pipeline tells the two apart. Local paths (and `file://` URLs) go
straight to the OS — real file handles, no fsspec overhead; anything else goes through
fsspec, which never downloads a whole object to read part of it.
"""

from __future__ import annotations

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
