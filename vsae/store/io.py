"""The storage edge: fsspec URIs to filesystems and zarr stores, and bounded async fan-out.

Everything above this module is synchronous; here a batch of zarr reads or writes runs
concurrently on zarr's event loop under an explicit concurrency budget.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import fsspec
import numpy as np
import zarr
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

T = TypeVar("T")
MAX_CONCURRENCY = 16
"""Concurrent zarr requests one process issues for one call (the store's I/O budget)."""


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


def gather(awaitables: Iterable[Awaitable[T]], limit: int = MAX_CONCURRENCY) -> list[T]:
    """Run awaitables on zarr's event loop, at most ``limit`` at a time, returning in order."""
    items = list(awaitables)

    async def bounded() -> list[T]:
        gate = asyncio.Semaphore(limit)

        async def one(aw: Awaitable[T]) -> T:
            async with gate:
                return await aw

        return await asyncio.gather(*(one(a) for a in items))

    return sync(bounded())


def crc32c(array: np.ndarray) -> int:
    """crc32c of an array's bytes in C order (the checksum zarr uses on chunks)."""
    import google_crc32c

    return int(google_crc32c.value(np.ascontiguousarray(array).view(np.uint8).reshape(-1)))


def put_small(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a small object whole: temp file + rename on local disk, one PUT on object stores,
    so a reader never sees half a marker or manifest."""
    if is_local(fs):
        import uuid

        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.partial"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)
