"""The router daemon's upstream hop: pooled keep-alive HTTP/1.1 connections to the box's services.

Every OpenAI request the daemon routes crosses this hop once each way, so its cost is most of the
router's. It is asyncio protocols plus httptools' response parser (the parser under uvicorn): a
request goes out in one ``transport.write`` and the answer is parsed as it arrives. Measured on
the 2-core test machine (client CPU per request, 8 concurrent, to a uvicorn app answering at once):
aiohttp's client ~100 us, this ~25 us; the router as a whole in ``scripts/bench_router.py``.

It is deliberately narrow: plain HTTP to the services' ports on 127.0.0.1 (the daemon runs on the
box), request and answer bodies passed through as bytes (no decompression, redirects, cookies or
proxies). Everything else in gpumod talks httpx.

Decisions:
- A reused keep-alive connection that breaks before the first byte of the answer (the service
  closed it while idle, or restarted) is retried once on a new connection. The request may then
  reach the service twice if it died after reading it; inference requests have no side effects.
- The read timeout is per byte, not per request: a long generation that keeps streaming is fine,
  a service that sends nothing for ``read_timeout`` seconds is cut off (``UpstreamTimeout``).
- A connection is pooled again only after its answer was read to the end and the service kept it
  alive; anything else (an answer abandoned mid-stream, ``Connection: close``) is closed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httptools

# streamed bytes buffered for a slow client before reading from the service pauses
HIGH_WATER = 256 * 1024


class UpstreamError(Exception):
    """The service could not be reached, or broke off its answer."""


class UpstreamTimeout(UpstreamError):
    """The service sent nothing for longer than the read timeout."""


class UpstreamUnreachable(UpstreamError):
    """Nothing accepts connections on the service's port (it died, or is restarting): the request
    never reached it, so it can be sent again once the service is back."""


class _Stale(UpstreamError):
    """A reused connection broke before any byte of the answer: safe to retry once."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one exchange at a time."""

    def __init__(self, pool: Pool, port: int) -> None:
        self.pool, self.port = pool, port
        self.loop = pool.loop
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.paused = False
        self.active = False  # in an exchange (between send and release)
        self.reused = False
        self._begin(None, stream=False)

    # -- one exchange -------------------------------------------------------------------------
    def _begin(self, head: asyncio.Future | None, *, stream: bool) -> None:
        # head resolves with the status once the headers are in (streamed), or with
        # (status, headers, body) once the whole answer is (buffered)
        self.head, self.stream = head, stream
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.waiter: asyncio.Future | None = None
        self.complete = False
        self.keep = False
        self.received = False
        self.got_headers = False
        self.delimited = False  # the answer says how long it is (content-length or chunked)
        self.error: UpstreamError | None = None
        self.last_rx = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None

    def send(self, data: bytes, *, stream: bool, reused: bool) -> asyncio.Future:
        head = self.loop.create_future()
        self._begin(head, stream=stream)
        self.reused, self.active = reused, True
        self.timer = self.loop.call_later(self.pool.read_timeout, self._check_timeout)
        self.transport.write(data)
        return head

    def _check_timeout(self) -> None:
        if self.complete or self.closed:
            return
        idle = self.loop.time() - self.last_rx
        if self.paused or idle < self.pool.read_timeout:  # a paused read waits on our client, not the service
            self.timer = self.loop.call_later(max(0.05, self.pool.read_timeout - idle), self._check_timeout)
            return
        self._fail(UpstreamTimeout(f"port {self.port} sent nothing for {self.pool.read_timeout:g}s"))
        self.transport.abort()

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.active:  # bytes nobody asked for (a server's parting 408, say): this connection is done
            self.closed = True
            self.transport.abort()
            return
        self.received = True
        self.last_rx = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"port {self.port} answered with broken HTTP: {exc}"))
            self.closed = True
            self.transport.abort()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer:
            self.timer.cancel()
        if self.complete or self.head is None:
            return
        if self.got_headers and not self.delimited:  # an answer that ends when the connection does
            self.on_message_complete()
            return
        if not self.received and self.reused:
            self._fail(_Stale(f"port {self.port} closed a kept-alive connection"))
        else:
            why = f": {exc}" if exc else ""
            self._fail(UpstreamError(f"port {self.port} closed the connection before the answer ended{why}"))

    # -- httptools callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request: stop parsing, the connection is not reused
            raise UpstreamError(f"port {self.port} sent an answer nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        low = name.lower()
        if low == b"content-length" or (low == b"transfer-encoding" and b"chunked" in value.lower()):
            self.delimited = True

    def on_headers_complete(self) -> None:
        self.got_headers = True
        if self.stream and self.head is not None and not self.head.done():
            self.head.set_result(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        if self.stream:
            self.buffered += len(body)
            if self.buffered > HIGH_WATER and not self.paused:
                self.paused = True
                self.transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        if self.complete:
            return
        self.complete = True
        self.keep = self.parser.should_keep_alive()  # read now: the parser forgets it for the next message
        if self.timer:
            self.timer.cancel()
        if not self.stream and self.head is not None and not self.head.done():
            self.head.set_result((self.parser.get_status_code(), self.headers, b"".join(self.chunks)))
            self.pool._release(self)
        else:
            self._wake()

    # -- helpers --------------------------------------------------------------------------------
    def _fail(self, error: UpstreamError) -> None:
        if self.error is not None or self.complete:
            return
        self.error = error
        if self.timer:
            self.timer.cancel()
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def keep_alive(self) -> bool:
        return self.complete and self.keep and not self.closed and self.error is None


class Response:
    """A streamed answer: status and headers now, the body through :meth:`chunks`."""

    def __init__(self, conn: _Connection, status: int) -> None:
        self._conn, self.status, self.headers = conn, status, conn.headers
        self._released = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body pieces as they arrive (SSE events are never held back), until the answer ends."""
        c = self._conn
        while True:
            while c.chunks:
                piece = c.chunks.popleft()
                c.buffered -= len(piece)
                if c.paused and c.buffered <= HIGH_WATER // 4:
                    c.paused = False
                    c.transport.resume_reading()
                yield piece
            if c.error is not None:
                raise c.error
            if c.complete:
                return
            c.waiter = c.loop.create_future()
            await c.waiter
            c.waiter = None

    def release(self) -> None:
        """Give the connection back (pooled if the answer was read to its end, else closed)."""
        if not self._released:
            self._released = True
            self._conn.pool._release(self._conn)


class Pool:
    """Keep-alive connections to 127.0.0.1 ports, at most ``max_idle`` idle per port."""

    def __init__(self, *, connect_timeout: float = 5.0, read_timeout: float = 600.0, max_idle: int = 64,
                 host: str = "127.0.0.1") -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_timeout, self.read_timeout, self.max_idle, self.host = connect_timeout, read_timeout, max_idle, host
        self.idle: dict[int, deque[_Connection]] = {}
        self.busy: set[_Connection] = set()

    async def _connect(self, port: int) -> _Connection:
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Connection(self, port), self.host, port), self.connect_timeout)
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"port {port} did not accept a connection in {self.connect_timeout:g}s") from None
        except OSError as exc:
            raise UpstreamUnreachable(f"port {port}: {exc.strerror or exc}") from None
        return conn

    def _idle_conn(self, port: int) -> _Connection | None:
        q = self.idle.get(port)
        while q:
            conn = q.pop()
            if not conn.closed:
                return conn
        return None

    def _release(self, conn: _Connection) -> None:
        self.busy.discard(conn)
        conn.active = False
        if conn.keep_alive():
            q = self.idle.setdefault(conn.port, deque())
            if len(q) >= self.max_idle:
                for dead in [c for c in q if c.closed]:
                    q.remove(dead)
            if len(q) < self.max_idle:
                q.append(conn)
                return
        if not conn.closed:
            conn.closed = True
            conn.transport.close()

    async def post(self, port: int, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
                   *, stream: bool = False) -> tuple[int, list[tuple[bytes, bytes]], bytes] | Response:
        """POST ``body`` to ``target`` (path and query) on ``port``.

        Buffered: ``(status, headers, body)`` with the connection already back in the pool.
        ``stream=True``: a :class:`Response` once the headers are in; the caller must
        :meth:`Response.release` it. Raises :class:`UpstreamError` / :class:`UpstreamTimeout`.
        """
        head = b"".join([b"POST ", target, b" HTTP/1.1\r\nhost: ", f"{self.host}:{port}".encode(),
                         b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n",
                         *[b"%s: %s\r\n" % kv for kv in headers], b"\r\n"])
        data = head + body
        for attempt in (0, 1):
            conn = self._idle_conn(port) if attempt == 0 else None  # a retry takes a new connection
            reused = conn is not None
            if conn is None:
                conn = await self._connect(port)
            self.busy.add(conn)
            first = conn.send(data, stream=stream, reused=reused)
            try:
                got = await first
            except _Stale:  # only ever a reused connection
                self._release(conn)
                continue
            except BaseException:  # an error, or our caller was cancelled: the connection is spent
                conn.error = conn.error or UpstreamError("abandoned")
                self._release(conn)
                raise
            return Response(conn, got) if stream else got
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for conn in [c for q in self.idle.values() for c in q] + list(self.busy):
            if not conn.closed:
                conn.closed = True
                conn.transport.close()
        self.idle.clear()
        self.busy.clear()
