"""A lease on a store: at most one driver grows, extracts into and publishes a store at a time.

The lease is one small JSON object (``_lease.json`` under the store root) created with a conditional write:
on local disk a fully written temp file hard-linked into place (atomic, and it fails if the name
exists), on S3 a PUT with ``If-None-Match: *``. It names its holder and when it expires; the holder renews it from a background thread
while it works and deletes it when done. A driver that finds a live lease leaves the store alone;
one that finds an expired lease (its holder died) takes it over. Two drivers taking over the same
expired lease in the same instant could both succeed; everything they write is idempotent, and
the night's run record is itself a conditional create, so at most one of them publishes.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

from vsae.store import io
from vsae.store.paths import Location, StoreLayout


def create_object(where: Location, data: bytes) -> None:
    """Write ``where`` only if it does not exist (raises ``FileExistsError`` if it does)."""
    fs, path = where.fs, where.path
    if io.is_local(fs):
        # Whole file first, then a hard link into place: the link is atomic and fails if the name
        # exists, so a concurrent reader never sees a created-but-empty lease.
        tmp = f"{path}.{uuid.uuid4().hex}.partial"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(errno.EEXIST, f"{path} exists already", path) from None
        except FileExistsError as err:
            if err.filename == path:
                raise
            raise OSError(err.errno, f"cannot create {path}: {err.strerror or err}", path) from err
        except OSError as err:  # full disk, quota, permissions: say where
            raise type(err)(err.errno, f"cannot create {path}: {err.strerror or err}", path) from err
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass  # never written, or its folder could not be made
        return
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "s3" in protocols or "s3a" in protocols:
        io.with_retries(fs, f"creating {where.uri}", fs.pipe_file, path, data, mode="create", nbytes=len(data))
        return
    if where.exists():  # other filesystems: best effort (not atomic)
        raise FileExistsError(path)
    where.write_bytes(data)


@dataclass
class Lease:
    """A held lease: :meth:`acquire`, then ``with lease.kept(): ...``, then :meth:`release`."""

    store_uri: str
    holder: str
    seconds: float
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def _location(self) -> Location:
        return StoreLayout(self.store_uri).lease

    def _body(self) -> bytes:
        return json.dumps({"holder": self.holder, "token": self.token, "host": socket.gethostname(),
                           "pid": os.getpid(), "expires": time.time() + self.seconds}).encode()

    @classmethod
    def acquire(cls, store_uri: str, holder: str, seconds: float) -> tuple[Lease | None, dict | None]:
        """``(lease, None)`` if taken, else ``(None, what the current holder wrote)``."""
        lease = cls(store_uri, holder, seconds)
        where = lease._location
        for _ in range(2):
            try:
                create_object(where, lease._body())
                return lease, None
            except FileExistsError:
                current = read_lease(store_uri)
                if current is not None and current.get("expires", 0) > time.time():
                    return None, current
                where.remove()  # expired (its holder died) or torn: take it over (gone already: fine)
        return None, read_lease(store_uri)

    def renew(self) -> bool:
        """Push the expiry out; False if the lease was lost (expired and taken over)."""
        current = read_lease(self.store_uri)
        if current is None or current.get("token") != self.token:
            return False
        self._location.write_bytes(self._body())
        return True

    def release(self) -> None:
        current = read_lease(self.store_uri)
        if current is not None and current.get("token") == self.token:
            self._location.remove()

    @contextmanager
    def kept(self):
        """Renew the lease every third of its duration while the body runs."""
        stop = threading.Event()

        def renew_until_stopped() -> None:
            while not stop.wait(self.seconds / 3):
                if not self.renew():
                    return  # lost: another driver took it over; its writes are idempotent too

        thread = threading.Thread(target=renew_until_stopped, daemon=True, name="vsae-lease")
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()


def read_lease(store_uri: str) -> dict | None:
    """What the lease's holder wrote, None if there is no lease, ``{}`` if it is torn."""
    try:
        return json.loads(StoreLayout(store_uri).lease.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # torn or empty: counts as expired
