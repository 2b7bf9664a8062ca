"""Zarr's store operations under the storage edge's deadlines and retry budget.

Zarr talks to an object store through its own ``FsspecStore`` on its own event loop, outside
:func:`vsae.store.io.with_retries`; :class:`RetryingStore` wraps that store so that creating,
opening, growing and reading arrays and attributes gets the same deadline per attempt, the same
budget per call and the same classification of errors as every other object request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from vsae.store import io

R = TypeVar("R")


async def retried(what: str, attempt: Callable[[], Awaitable[R]], nbytes: int = 0) -> R:
    """``await attempt()`` with :func:`vsae.store.io.with_retries`'s deadline, budget and
    classification; each attempt past its deadline is cancelled. Raises StorageUnavailable."""
    deadline = io._Deadline(what, nbytes)
    while True:
        seconds = deadline.next_attempt()
        try:
            return await asyncio.wait_for(attempt(), seconds)
        except Exception as err:  # noqa: BLE001 - classified right below
            if not io._transient(err):
                raise
            await asyncio.sleep(deadline.backoff(err))


class RetryingStore(WrapperStore[Store]):
    """A zarr store whose every request runs under :func:`retried` (``uri`` names it in errors)."""

    def __init__(self, store: Store, uri: str = ""):
        super().__init__(store)
        self.uri = uri or str(store)

    def _with_store(self, store: Store) -> RetryingStore:
        return type(self)(store, self.uri)

    def _what(self, op: str, key: str) -> str:
        return f"{op} {self.uri.rstrip('/')}/{key}"

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        return await retried(self._what("reading", key), lambda: self._store.get(key, prototype, byte_range))

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        return await retried(self._what("reading", key_ranges[0][0] if key_ranges else ""),
                             lambda: self._store.get_partial_values(prototype, key_ranges))

    async def exists(self, key: str) -> bool:
        return await retried(self._what("checking", key), lambda: self._store.exists(key))

    async def set(self, key: str, value: Buffer) -> None:
        await retried(self._what("writing", key), lambda: self._store.set(key, value), len(value))

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        await retried(self._what("creating", key), lambda: self._store.set_if_not_exists(key, value), len(value))

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        for key, value in values:
            await self.set(key, value)

    async def delete(self, key: str) -> None:
        await retried(self._what("deleting", key), lambda: self._store.delete(key))

    async def delete_dir(self, prefix: str) -> None:
        await retried(self._what("deleting", prefix), lambda: self._store.delete_dir(prefix))

    async def is_empty(self, prefix: str) -> bool:
        return await retried(self._what("listing", prefix), lambda: self._store.is_empty(prefix))

    async def _listed(self, prefix: str, listing: Callable[[], AsyncIterator[str]]) -> AsyncIterator[str]:
        async def collect() -> list[str]:
            return [key async for key in listing()]

        for key in await retried(self._what("listing", prefix), collect):
            yield key

    def list(self) -> AsyncIterator[str]:
        return self._listed("", self._store.list)

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        return self._listed(prefix, lambda: self._store.list_prefix(prefix))

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        return self._listed(prefix, lambda: self._store.list_dir(prefix))

    async def _get_many(self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
                        ) -> AsyncIterator[tuple[str, Buffer | None]]:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)


__all__ = ["RetryingStore", "retried"]
