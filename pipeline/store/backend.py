"""Where a store lives: a local folder or an object-store URL, opened as an Icechunk repo.

Layout of a store at URI:

    URI/repo/            the Icechunk repository (transactional Zarr v3: commits, branches)
    URI/catalog.parquet/ the episode catalog of the newest ingest commit, Parquet parts for pyarrow / DuckDB
    URI/.lock            local stores only: held by the one process allowed to commit

Icechunk's local-filesystem storage is not safe for concurrent commits from several
processes, so local writers take an exclusive `flock` on URI/.lock for the whole run; the
kernel releases it when the process dies, so a SIGKILLed ingest never leaves it stuck.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("ICECHUNK_LOG", "icechunk=error")  # silence the local-storage notice we handle

import icechunk as ic  # noqa: E402

from pipeline.uri import is_remote, join_uri, local_path  # noqa: E402
from schemas.errors import ConfigError, InfrastructureError  # noqa: E402

log = logging.getLogger(__name__)


class StoreError(ConfigError):
    """The store cannot be opened as asked (no such store, version, or unsupported URL): the
    command names a store or version that is not there. Raised only for that: a storage fault
    while opening (network, object store 5xx, a full or read-only disk) keeps its own type,
    which `pipeline.errors.classify` sorts into infrastructure or resource."""


class StoreBusyError(InfrastructureError):
    """Another process is writing to this store: nothing is wrong with the input or the
    config, and the same run succeeds once the other writer is done (retryable)."""


_UNKNOWN_VERSION = re.compile(r"snapshot not found|ref not found|invalid snapshot id|branch not found|tag not found")


def unknown_version(e: BaseException) -> bool:
    """Whether an Icechunk error says the asked-for version, branch or tag does not exist (as
    opposed to the storage failing while looking)."""
    return isinstance(e, ValueError | TypeError) or bool(_UNKNOWN_VERSION.search(str(e)))


def storage_for(uri: str) -> ic.Storage:
    """Icechunk storage for the repo under URI. Object stores read credentials from the
    environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, ...) as their SDKs do."""
    repo_uri = join_uri(uri, "repo")
    if not is_remote(uri):
        return ic.local_filesystem_storage(str(Path(local_path(repo_uri)).resolve()))
    u = urlparse(repo_uri)
    prefix = u.path.lstrip("/")
    if u.scheme in ("s3", "s3a"):
        # S3-compatible services (MinIO, Ceph, R2, a local moto server) are named the way
        # boto3 and s3fs take them: AWS_ENDPOINT_URL(_S3); such endpoints use path-style URLs.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if endpoint:
            return ic.s3_storage(bucket=u.netloc, prefix=prefix, endpoint_url=endpoint, region=region,
                                 allow_http=endpoint.startswith("http://"), force_path_style=True, from_env=True)
        return ic.s3_storage(bucket=u.netloc, prefix=prefix, region=region, from_env=True)
    if u.scheme in ("gs", "gcs"):
        return ic.gcs_storage(bucket=u.netloc, prefix=prefix, from_env=True)
    if u.scheme in ("az", "abfs"):
        return ic.azure_storage(account=os.environ.get("AZURE_STORAGE_ACCOUNT", ""), container=u.netloc,
                                prefix=prefix, from_env=True)
    if u.scheme == "memory":
        return ic.in_memory_storage()
    raise StoreError(f"store URL {uri!r}: unsupported scheme {u.scheme!r}; use a local path, s3://, gs:// or az://")


def _no_store(uri: str) -> StoreError:
    return StoreError(f"no feature store at {uri!r} (run `lawam ingest ... --store {uri}` first)")


def _missing_locally(uri: str) -> bool:
    """A local store without its repository folder (looked for without creating anything)."""
    return not is_remote(uri) and not Path(local_path(join_uri(uri, "repo"))).is_dir()


def open_repo(uri: str, *, create: bool) -> ic.Repository:
    """The Icechunk repository of the store at `uri`, created when `create`. Without `create`
    a missing store is a StoreError and nothing is made: a local store's folder is looked for
    before Icechunk is asked (its `exists` creates the folder it looks in)."""
    if not create and _missing_locally(uri):
        raise _no_store(uri)
    storage = storage_for(uri)
    if ic.Repository.exists(storage):
        return ic.Repository.open(storage)
    if not create:
        raise _no_store(uri)
    if not is_remote(uri):
        Path(local_path(uri)).mkdir(parents=True, exist_ok=True)
    return ic.Repository.create(storage)


class FileLock:
    """An exclusive `flock` on a file in a local store's folder, released on exit (object stores
    have none: Icechunk's conditional commits stand in). `busy(fd)` says what a lock held by
    another process means: refuse (raise) or wait (block on `fd`)."""

    file = ".lock"

    def __init__(self, uri: str):
        self.uri = uri
        self._fd: int | None = None

    def _lock(self, folder: Path) -> None:
        fd = os.open(folder / self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.busy(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def busy(self, fd: int) -> None:
        raise NotImplementedError

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class WriterLock(FileLock):
    """Exclusive per-store writer lock (local stores), refused while another process holds it.
    Object stores rely on Icechunk's conditional writes: a commit on a branch that moved fails
    instead of overwriting. Only a writer that may create the store (`create`) makes its folder;
    any other meets a missing store as a StoreError and leaves nothing behind."""

    def __init__(self, uri: str, *, create: bool = False):
        super().__init__(uri)
        self.create = create

    def __enter__(self) -> WriterLock:
        if not is_remote(self.uri):
            if not self.create and _missing_locally(self.uri):
                raise _no_store(self.uri)
            path = Path(local_path(self.uri))
            path.mkdir(parents=True, exist_ok=True)
            self._lock(path)
        return self

    def busy(self, fd: int) -> None:
        raise StoreBusyError(f"another process is writing to {self.uri!r}; wait for it to finish") from None
