"""The storage edge: fsspec URIs to filesystems and zarr stores, and bounded concurrent I/O.

Everything above this module is synchronous; here a batch of object reads or writes runs
concurrently on one thread pool per process, under an explicit concurrency budget.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, TypeVar

import fsspec
import zarr
from zarr.storage import FsspecStore, LocalStore

T = TypeVar("T")
R = TypeVar("R")
MAX_CONCURRENCY = 16
"""Concurrent object requests one process issues (the store's I/O budget)."""


def resolve_uri(uri: str | os.PathLike) -> str:
    """A URI string; local paths become absolute so workers in other directories agree. An empty
    one is refused (ConfigError): it would silently mean the current directory."""
    text = os.fspath(uri)
    if not text.strip():
        from vsae.errors import ConfigError

        raise ConfigError("empty location: give a local path or a URI such as s3://bucket/prefix")
    if "://" not in text:
        return os.path.abspath(text)
    return text.rstrip("/")


def safe_relative(relative: str) -> str:
    """``relative`` if it names something inside a root; raises :class:`UnsafePath` for an
    absolute path, a ``..`` segment, a backslash or a URI (names that come from data, such as a
    listing's shard paths or a tar's member names, must never reach outside their root)."""
    from vsae.errors import UnsafePath

    text = str(relative)
    parts = text.split("/")
    if (not text or text.startswith(("/", "~")) or "\\" in text or "://" in text or ".." in parts
            or (len(text) > 1 and text[1] == ":")):
        raise UnsafePath(f"refusing path {text!r}: it must stay inside its root (no leading '/', '..', "
                         "drive, backslash or URI)")
    return text


def safe_join(root: str, relative: str) -> str:
    """``root/relative`` after :func:`safe_relative` has checked ``relative``."""
    return posixpath.join(root.rstrip("/"), safe_relative(relative))


def filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the root path inside it for ``uri``."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs, path.rstrip("/")


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def zarr_store(uri: str, fs: fsspec.AbstractFileSystem, path: str, *, read_only: bool,
               storage_options: dict[str, Any] | None = None) -> zarr.abc.store.Store:
    """A zarr store for ``uri``: zarr's own LocalStore on local disk (atomic renames), else fsspec."""
    if is_local(fs):
        return LocalStore(path, read_only=read_only)
    return FsspecStore.from_url(uri, storage_options=storage_options or {}, read_only=read_only)


def map_io(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(item) ...]`` on the process's I/O thread pool (``MAX_CONCURRENCY`` threads).

    Object reads and writes release the GIL, and so do zstd, crc32c and large copies, so shard
    encoding and transfers overlap. Must not be called from inside ``fn`` (the pool is shared).
    """
    items = list(items)
    if len(items) <= 1:
        return [fn(item) for item in items]
    return list(_pool().map(fn, items))


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(MAX_CONCURRENCY, thread_name_prefix="vsae-io")


RETRY_SECONDS = 60.0
"""How long an object-store request keeps being retried (with backoff) while the endpoint
refuses or drops connections, before the error goes to the caller (and so to Ray's retries)."""
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0
_NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _transient(err: BaseException) -> bool:
    """Errors worth retrying on an object store: the connection, not the request, failed."""
    if isinstance(err, _NOT_TRANSIENT):
        return False
    if isinstance(err, (ConnectionError, TimeoutError, OSError)):
        return True
    # botocore's and aiohttp's connection errors are not OSErrors; matched by name so that
    # neither is imported for local stores.
    names = {c.__name__ for c in type(err).__mro__}
    return bool(names & {"ConnectionError", "EndpointConnectionError", "ConnectionClosedError",
                         "ReadTimeoutError", "ConnectTimeoutError", "ClientConnectionError", "ClientOSError",
                         "ServerDisconnectedError", "FSTimeoutError"})


def with_retries(fs: fsspec.AbstractFileSystem, what: str, call: Callable[[], R]) -> R:
    """``call()`` on an object store, retried with jittered exponential backoff for up to
    :data:`RETRY_SECONDS` while the failure is a connection failure; local disks are not retried
    (a full disk or a permission error is not going away). A request that keeps failing raises
    :class:`~vsae.errors.StorageUnavailable` (an ``OSError``) saying what and for how long."""
    if is_local(fs):
        return call()
    import random
    import time

    from vsae.errors import StorageUnavailable

    started, delay, attempts = time.monotonic(), _BACKOFF_FIRST, 0
    while True:
        attempts += 1
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - classified right below
            if not _transient(err):
                raise
            waited = time.monotonic() - started
            if waited + delay > RETRY_SECONDS:
                raise StorageUnavailable(f"{what}: the object store kept failing for {waited:.1f} s "
                                         f"({attempts} attempts): {type(err).__name__}: {err}") from err
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, _BACKOFF_MAX)


def get_object(fs: fsspec.AbstractFileSystem, path: str, start: int | None = None,
               end: int | None = None) -> bytes:
    """An object's bytes, or the range ``[start, end)``; ``start=-n`` reads the last n bytes.
    Connection failures of an object store are retried (:func:`with_retries`)."""
    return with_retries(fs, f"reading {path}", lambda: fs.cat_file(path, start=start, end=end))


def put_object(fs: fsspec.AbstractFileSystem, path: str, data: bytes | list) -> None:
    """Write an object whole: temp file + rename on local disk, one PUT on object stores, so a
    reader never sees half a shard, marker or manifest. ``data`` may be a list of buffers,
    written in order (local disk takes them as they are; object stores get them joined)."""
    if is_local(fs):
        import uuid

        tmp = f"{path}.{uuid.uuid4().hex}.partial"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                if isinstance(data, list):
                    f.writelines(data)
                else:
                    f.write(data)
            os.replace(tmp, path)
        except OSError as err:  # full disk, quota, permissions: say where, leave no partial file
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise type(err)(err.errno, f"cannot write {path}: {err.strerror or err}", path) from err
    else:
        blob = b"".join(data) if isinstance(data, list) else data
        with_retries(fs, f"writing {path}", lambda: fs.pipe_file(path, blob))
