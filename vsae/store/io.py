"""The storage edge: fsspec URIs to filesystems and zarr stores, and bounded concurrent I/O.

Everything above this module is synchronous; here a batch of object reads or writes runs
concurrently on one thread pool per process, under an explicit concurrency budget.
"""

from __future__ import annotations

import os
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
    """A URI string; local paths become absolute so workers in other directories agree."""
    text = os.fspath(uri)
    if "://" not in text:
        return os.path.abspath(text)
    return text.rstrip("/")


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


def get_object(fs: fsspec.AbstractFileSystem, path: str, start: int | None = None,
               end: int | None = None) -> bytes:
    """An object's bytes, or the range ``[start, end)``; ``start=-n`` reads the last n bytes."""
    return fs.cat_file(path, start=start, end=end)


def put_object(fs: fsspec.AbstractFileSystem, path: str, data: bytes | list) -> None:
    """Write an object whole: temp file + rename on local disk, one PUT on object stores, so a
    reader never sees half a shard, marker or manifest. ``data`` may be a list of buffers,
    written in order (local disk takes them as they are; object stores get them joined)."""
    if is_local(fs):
        import uuid

        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.partial"
        with open(tmp, "wb") as f:
            if isinstance(data, list):
                f.writelines(data)
            else:
                f.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, b"".join(data) if isinstance(data, list) else data)
