"""A fault-injecting HTTP proxy on loopback, in front of the test S3 endpoint.

The client (s3fs, botocore, aiohttp) is pointed at the proxy and never patched; the proxy reads
each request's head and, by its current mode, passes the request through, answers
``503 SlowDown``, stalls it (accepts, then never answers, until the proxy closes; a stalled
request stays stalled after the mode changes back, as a hung server connection does) or, in
``refuse`` mode, closes its listening socket (new connections are refused) and resets the open
ones. Modes: ``pass``, ``refuse``, ``stall`` (every request), ``stall_put`` (PUTs only),
``throttle`` (503 SlowDown).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter

MODES = ("pass", "refuse", "stall", "stall_put", "throttle")
SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy:
    def __init__(self, endpoint_url: str):
        host, port = endpoint_url.split("//")[1].rstrip("/").split(":")
        self.target = (host, int(port))
        with socket.create_server(("127.0.0.1", 0)) as probe:
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "pass"
        self.seen: Counter = Counter()  # (mode, method) -> requests
        self.paths: list[tuple[str, str]] = []  # (method, path) of requests passed through
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._closed: asyncio.Event | None = None
        self._trigger: tuple | None = None
        self.fired: float | None = None  # when the armed window began (time.monotonic())
        threading.Thread(target=self._loop.run_forever, daemon=True, name="fault-proxy").start()
        self._call(self._start())

    # -- control, from the test's thread -------------------------------------------------------
    def set(self, mode: str) -> None:
        assert mode in MODES, mode
        self._call(self._set(mode))

    def window(self, mode: str, seconds: float, start_after: float = 0.0) -> threading.Thread:
        """``mode`` for ``seconds`` after ``start_after`` seconds, then ``pass`` (on a thread)."""
        def run() -> None:
            time.sleep(start_after)
            self.set(mode)
            time.sleep(seconds)
            self.set("pass")
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def arm(self, mode: str, seconds: float, method: str | None = None, path_contains: str = "") -> None:
        """Switch to ``mode`` for ``seconds`` at the first request (``method``, a path containing
        ``path_contains``) that arrives from now on, that request included; then ``pass``."""
        assert mode in ("stall", "stall_put", "throttle"), mode
        self.fired = None
        self._trigger = (mode, seconds, method, path_contains)

    def count(self, mode: str, method: str | None = None) -> int:
        return sum(n for (m, meth), n in self.seen.items() if m == mode and method in (None, meth))

    def close(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _call(self, coro) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # -- the proxy, on its own loop ------------------------------------------------------------
    async def _start(self) -> None:
        self._closed = asyncio.Event()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port, reuse_address=True)

    async def _set(self, mode: str) -> None:
        if mode == "refuse" and self._server is not None:
            self._server.close()
            self._server = None
            for w in list(self._writers):
                _reset(w)
        elif mode != "refuse" and self._server is None:
            await self._listen()
        self.mode = mode

    async def _shutdown(self) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            _reset(w)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, path = head.split(b" ", 2)[:2]
                method = method.decode()
                self._maybe_fire(method, path.decode())
                mode = self.mode
                self.seen[(mode, method)] += 1
                if mode == "stall" or (mode == "stall_put" and method == "PUT"):
                    await self._closed.wait()  # never answered
                    return
                if mode == "throttle":
                    body = b"" if method == "HEAD" else SLOW_DOWN
                    writer.write(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(SLOW_DOWN), body))
                    await writer.drain()
                    return
                if upstream is None:
                    up_reader, upstream = await asyncio.open_connection(*self.target)
                    self._writers.add(upstream)
                    asyncio.ensure_future(self._pump(up_reader, writer))
                self.paths.append((method, path.decode()))
                upstream.write(head)
                await _copy_body(head, reader, upstream)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            return
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.close()

    def _maybe_fire(self, method: str, path: str) -> None:
        if self._trigger is None:
            return
        mode, seconds, want, contains = self._trigger
        if (want is None or method == want) and contains in path:
            self._trigger, self.mode, self.fired = None, mode, time.monotonic()
            self._loop.call_later(seconds, self._end_window, mode)

    def _end_window(self, mode: str) -> None:
        if self.mode == mode:
            self.mode = "pass"

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()


async def _copy_body(head: bytes, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter) -> None:
    """Forward the request body that follows ``head`` (Content-Length or chunked), as it comes
    (an ``Expect: 100-continue`` client sends it only after the endpoint's 100)."""
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            upstream.write(size_line)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                    upstream.write(line)
                upstream.write(b"\r\n")
                break
            upstream.write(await reader.readexactly(size + 2))
            await upstream.drain()
    else:
        left = int(headers.get(b"content-length", b"0"))
        while left:
            data = await reader.read(min(left, 65536))
            if not data:
                raise ConnectionError("client closed mid-body")
            upstream.write(data)
            await upstream.drain()
            left -= len(data)
    await upstream.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    writer.close()
