"""The storage edge: fsspec URIs to filesystems and zarr stores, and bounded concurrent I/O.

Everything above this module is synchronous; here a batch of object reads or writes runs
concurrently on one thread pool per process, under an explicit concurrency budget.
"""

from __future__ import annotations

import inspect
import os
import posixpath
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from functools import lru_cache
from io import BufferedReader, RawIOBase
from typing import Any, TypeVar

import fsspec
import zarr
from fsspec.asyn import AsyncFileSystem
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
    fs, path = fsspec.core.url_to_fs(uri, **client_options(uri, storage_options))
    return fs, path.rstrip("/")


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def zarr_store(uri: str, fs: fsspec.AbstractFileSystem, path: str, *, read_only: bool,
               storage_options: dict[str, Any] | None = None) -> zarr.abc.store.Store:
    """A zarr store for ``uri``: zarr's own LocalStore on local disk (atomic renames), else fsspec."""
    if is_local(fs):
        return LocalStore(path, read_only=read_only)
    from vsae.store.retrying import RetryingStore

    return RetryingStore(FsspecStore.from_url(uri, storage_options=client_options(uri, storage_options),
                                              read_only=read_only), uri)


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


@dataclass(frozen=True)
class IOSettings:
    """Deadlines and the retry budget of every object-store request (local disks have none).

    Each field is overridden by an environment variable (``VSAE_IO_`` + the field's name in
    capitals, e.g. ``VSAE_IO_RETRY_SECONDS=120``), read at each call, so a driver and its workers
    agree (the cluster forwards ``VSAE_IO_*`` to its workers). See README, "Storage".
    """

    connect_timeout: float = 5.0
    """Seconds to open a connection (botocore ``connect_timeout``)."""
    read_timeout: float = 15.0
    """Longest silence, in seconds, while waiting for response bytes (botocore ``read_timeout``)."""
    attempt_seconds: float = 20.0
    """Deadline of one attempt of a call without a body; a call moving ``n`` bytes gets
    ``attempt_seconds + n / min_bytes_per_second``. An attempt past its deadline is cancelled
    (its connection closed) and the call retried on a fresh one."""
    min_bytes_per_second: float = 1 << 20
    """The slowest transfer rate (bytes/s) that is not a stall."""
    retry_seconds: float = 60.0
    """Budget of one call without a body, all attempts and waits included (a call moving ``n``
    bytes gets ``n / min_bytes_per_second`` more); no attempt runs past it, and once it is spent
    the call raises :class:`~vsae.errors.StorageUnavailable`."""
    client_attempts: int = 1
    """Attempts botocore makes inside each of ours (1: the budget above is the only retry loop)."""

    def attempt_deadline(self, nbytes: int = 0) -> float:
        """Seconds one attempt moving ``nbytes`` may take."""
        return self.attempt_seconds + max(0, nbytes) / self.min_bytes_per_second

    def budget(self, nbytes: int = 0) -> float:
        """Seconds one call moving ``nbytes`` may take, all attempts together."""
        return self.retry_seconds + max(0, nbytes) / self.min_bytes_per_second


def settings() -> IOSettings:
    """The current :class:`IOSettings` (defaults, overridden by ``VSAE_IO_*`` variables).

    Raises :class:`~vsae.errors.ConfigError` for a variable that is not a positive number."""
    from vsae.errors import ConfigError

    values: dict[str, Any] = {}
    for f in fields(IOSettings):
        name = f"VSAE_IO_{f.name.upper()}"
        text = os.environ.get(name)
        if text is None or text == "":
            continue
        try:
            value = int(text) if f.type in (int, "int") else float(text)
        except ValueError:
            value = -1
        if not value > 0:
            raise ConfigError(f"{name}={text!r}: must be a positive {'integer' if f.type in (int, 'int') else 'number'}")
        values[f.name] = value
    return IOSettings(**values)


def client_options(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``storage_options`` with the deadlines of :func:`settings` added for an S3 ``uri``
    (s3fs ``config_kwargs``: botocore ``connect_timeout``, ``read_timeout`` and ``retries``);
    options the caller gave win. Other schemes get their options unchanged."""
    opts = dict(storage_options or {})
    if uri.split("://", 1)[0] not in ("s3", "s3a"):
        return opts
    s = settings()
    config = {"connect_timeout": s.connect_timeout, "read_timeout": s.read_timeout,
              "retries": {"max_attempts": s.client_attempts, "mode": "standard"}}
    config.update(opts.get("config_kwargs") or {})
    opts["config_kwargs"] = config
    return opts


_NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _transient(err: BaseException) -> bool:
    """Errors worth retrying on an object store: the connection or the service failed, not the
    request (a missing object is an answer; vsae's own errors, a spent budget included, are final)."""
    from vsae.errors import VsaeError

    if isinstance(err, (*_NOT_TRANSIENT, VsaeError)):
        return False
    if isinstance(err, (ConnectionError, TimeoutError, OSError)):
        return True  # s3fs raises 503 SlowDown and 500 InternalError as OSError
    # botocore's and aiohttp's connection errors are not OSErrors; matched by name so that
    # neither is imported for local stores.
    names = {c.__name__ for c in type(err).__mro__}
    return bool(names & {"ConnectionError", "EndpointConnectionError", "ConnectionClosedError",
                         "ReadTimeoutError", "ConnectTimeoutError", "ClientConnectionError", "ClientOSError",
                         "ServerDisconnectedError", "FSTimeoutError", "HTTPClientError", "ResponseParserError",
                         "ClientPayloadError"})


class _Deadline:
    """One call's retry state: its budget, attempts, backoff, and the error when it is spent."""

    def __init__(self, what: str, nbytes: int):
        import time

        self.what, self.settings, self.attempts = what, settings(), 0
        self.started = time.monotonic()
        self.budget = self.settings.budget(nbytes)
        self.per_attempt = self.settings.attempt_deadline(nbytes)
        self.delay = _BACKOFF_FIRST

    def next_attempt(self) -> float:
        """Seconds the next attempt may take (never past the budget)."""
        import time

        self.attempts += 1
        left = self.budget - (time.monotonic() - self.started)
        return max(0.5, min(self.per_attempt, left))

    def backoff(self, err: BaseException) -> float:
        """Seconds to wait before the next attempt; raises StorageUnavailable once the budget is spent."""
        import random
        import time

        from vsae.errors import StorageUnavailable

        waited = time.monotonic() - self.started
        left = self.budget - waited
        if left < 0.25:
            detail = "timed out" if _is_timeout(err) else f"{type(err).__name__}: {err}"
            raise StorageUnavailable(
                f"{self.what}: the object store did not answer within the {self.budget:.0f} s budget "
                f"({self.attempts} attempts in {waited:.1f} s, each at most {self.per_attempt:.0f} s; "
                f"last: {detail}). Set VSAE_IO_RETRY_SECONDS for a longer budget.",
                operation=self.what) from err
        wait = min(self.delay * random.uniform(0.5, 1.0), left - 0.25)
        self.delay = min(self.delay * 2, _BACKOFF_MAX)
        return wait


def _is_timeout(err: BaseException) -> bool:
    names = {c.__name__ for c in type(err).__mro__}
    return isinstance(err, TimeoutError) or bool(names & {"ReadTimeoutError", "ConnectTimeoutError", "FSTimeoutError"})


_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0


def with_retries(fs: fsspec.AbstractFileSystem, what: str, call: Callable[..., R], *args: Any,
                 nbytes: int = 0, **kwargs: Any) -> R:
    """``call(*args, **kwargs)`` on an object store under a deadline per attempt and a budget
    per call (:class:`IOSettings`), retried with jittered exponential backoff while the failure
    is the endpoint's (refused or dropped connections, timeouts, 503 SlowDown, 500); local disks
    are called once (a full disk is not going away). ``what`` names the operation and the URI;
    ``nbytes`` is the size of the request's body or answer, if known (larger requests get longer).

    A stalled attempt is abandoned: a method of an asynchronous filesystem (s3fs, gcsfs, ...)
    gets fsspec's ``timeout``, which cancels the request and closes its connection; any other
    callable runs on a daemon thread that is left behind at its deadline. FileNotFoundError and
    other answers are raised at once. Raises :class:`~vsae.errors.StorageUnavailable` (an
    ``OSError``) naming ``what`` once the budget is spent."""
    if is_local(fs):
        return call(*args, **kwargs)
    import time

    deadline = _Deadline(what, nbytes)
    cancellable = (isinstance(fs, AsyncFileSystem) and getattr(call, "__self__", None) is fs
                   and inspect.iscoroutinefunction(getattr(call, "__wrapped__", None)))
    while True:
        seconds = deadline.next_attempt()
        try:
            if cancellable:
                return call(*args, timeout=seconds, **kwargs)
            if _in_memory(fs):
                return call(*args, **kwargs)
            return _on_thread(call, args, kwargs, seconds)
        except Exception as err:  # noqa: BLE001 - classified right below
            if not _transient(err):
                raise
            time.sleep(deadline.backoff(err))


def _in_memory(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "memory" in protocols


def _on_thread(call: Callable[..., R], args: tuple, kwargs: dict, seconds: float) -> R:
    """``call`` on a daemon thread, waited for ``seconds`` (TimeoutError after: the thread is
    abandoned, never joined, so a request that never returns cannot block the caller)."""
    import threading

    out: list = []

    def run() -> None:
        try:
            out.append((True, call(*args, **kwargs)))
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            out.append((False, err))

    thread = threading.Thread(target=run, daemon=True, name="vsae-io-attempt")
    thread.start()
    thread.join(seconds)
    if not out:
        raise TimeoutError(f"no answer in {seconds:.1f} s")
    ok, value = out[0]
    if ok:
        return value
    raise value


def object_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """``path`` on ``fs`` as a URI (``s3://bucket/key``), for messages."""
    try:
        return fs.unstrip_protocol(path)
    except Exception:  # noqa: BLE001 - a message must not fail
        return path


def get_object(fs: fsspec.AbstractFileSystem, path: str, start: int | None = None,
               end: int | None = None) -> bytes:
    """An object's bytes, or the range ``[start, end)``; ``start=-n`` reads the last n bytes.
    Connection failures of an object store are retried (:func:`with_retries`)."""
    nbytes = (end - start) if start is not None and end is not None and start >= 0 else 0
    return with_retries(fs, f"reading {object_uri(fs, path)}", fs.cat_file, path, start=start, end=end,
                        nbytes=nbytes)


def info(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any]:
    """fsspec's ``info`` of ``path`` (``size``, ``type``...), retried. Raises FileNotFoundError."""
    return with_retries(fs, f"checking {object_uri(fs, path)}", fs.info, path)


def exists(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether ``path`` exists (an object or a folder), retried: "no" is an answer, a throttled
    or unreachable endpoint is retried, never taken for "no"."""
    return with_retries(fs, f"checking {object_uri(fs, path)}", fs.exists, path)


def open_object(fs: fsspec.AbstractFileSystem, path: str, buffer: int = 1 << 20) -> BufferedReader:
    """A seekable binary file over one object whose every read is a retried ranged
    :func:`get_object` (for readers that want a file: tarfile, pyarrow). Raises FileNotFoundError."""
    if is_local(fs):
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    return BufferedReader(_ObjectFile(fs, path, int(info(fs, path)["size"])), buffer)


class _ObjectFile(RawIOBase):
    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, size: int):
        self.fs, self.path, self.size, self.pos = fs, path, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = max(0, {0: 0, 1: self.pos, 2: self.size}[whence] + offset)
        return self.pos

    def readinto(self, buf) -> int:
        end = min(self.size, self.pos + len(buf))
        if end <= self.pos:
            return 0
        data = get_object(self.fs, self.path, self.pos, end)
        buf[:len(data)] = data
        self.pos += len(data)
        return len(data)


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
        with_retries(fs, f"writing {object_uri(fs, path)}", fs.pipe_file, path, blob, nbytes=len(blob))
