"""The router's upstream pool against scripted HTTP servers on loopback (real sockets, real timing).

Each server is an asyncio TCP server whose handler is written out byte by byte, so every way a
service can answer (or fail to) is exercised: keep-alive reuse, a kept-alive connection the
service closed, close-delimited and chunked answers, a hang, broken HTTP, a slow reader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gpumod_tasks.daemon.upstream import HIGH_WATER, Pool, UpstreamError, UpstreamTimeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
JSON = [(b"content-type", b"application/json")]


async def read_request(r: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request off the wire: (head, body)."""
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await r.readexactly(length)


def answer(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body), b"".join(e + b"\r\n" for e in extra), body)


class Server:
    """A TCP server on a free loopback port; counts connections, keeps what it received."""

    def __init__(self, handler: Handler) -> None:
        self.handler, self.connections, self.requests = handler, 0, []

    async def __aenter__(self) -> Server:
        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(r, w, self.connections)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                w.close()

        self.srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        self.port = self.srv.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.srv.close()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


def echo_server(s: list) -> Handler:
    async def handler(r, w, n):
        while True:
            head, body = await read_request(r)
            s.append((n, head, body))
            w.write(answer(b'{"echo": %s}' % body))
            await w.drain()

    return handler


def test_keep_alive_reuses_one_connection_and_frames_the_request():
    seen: list = []

    async def main():
        async with Server(echo_server(seen)) as srv:
            pool = Pool()
            for i in range(5):
                status, headers, body = await pool.post(srv.port, b"/v1/chat/completions?x=1", JSON, b'{"n": %d}' % i)
                assert status == 200 and body == b'{"echo": {"n": %d}}' % i
                assert (b"content-type", b"application/json") in headers
            assert srv.connections == 1
            await pool.close()

    run(main())
    head = seen[0][1]
    assert head.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
    assert b"content-type: application/json\r\n" in head and b"content-length: 8\r\n" in head
    assert [n for n, _, _ in seen] == [1] * 5


def test_concurrent_requests_each_get_their_own_answer():
    seen: list = []

    async def main():
        async with Server(echo_server(seen)) as srv:
            pool = Pool()
            got = await asyncio.gather(*[pool.post(srv.port, b"/", JSON, b'{"n": %d}' % i) for i in range(20)])
            assert [g[2] for g in got] == [b'{"echo": {"n": %d}}' % i for i in range(20)]
            assert srv.connections == 20  # none idle while all were in flight
            again = await asyncio.gather(*[pool.post(srv.port, b"/", JSON, b"{}") for _ in range(20)])
            assert all(g[0] == 200 for g in again) and srv.connections == 20  # all twenty reused
            await pool.close()

    run(main())


def test_a_kept_alive_connection_the_service_closed_is_retried_once_on_a_new_one():
    async def handler(r, w, n):
        await read_request(r)
        w.write(answer(b'{"conn": %d}' % n))
        await w.drain()
        if n == 1:  # hang up while idle, as a service timing out keep-alive or restarting does
            await asyncio.sleep(0.05)
        elif n == 2:  # the race: the next request is already on its way when the service hangs up
            await read_request(r)
        w.transport.abort()

    async def main():
        async with Server(handler) as srv:
            pool = Pool()
            assert (await pool.post(srv.port, b"/", JSON, b"{}"))[2] == b'{"conn": 1}'
            await asyncio.sleep(0.2)  # the close is seen: the idle connection leaves the pool
            assert (await pool.post(srv.port, b"/", JSON, b"{}"))[2] == b'{"conn": 2}'
            # goes out on connection 2, which dies without a byte of answer: retried on a new one
            assert (await pool.post(srv.port, b"/", JSON, b"{}"))[2] == b'{"conn": 3}'
            assert srv.connections == 3
            await pool.close()

    run(main())


def test_a_fresh_connection_closed_before_the_answer_is_an_error_not_a_retry():
    async def handler(r, w, n):
        await read_request(r)
        w.transport.abort()

    async def main():
        async with Server(handler) as srv:
            pool = Pool()
            with pytest.raises(UpstreamError, match=f"port {srv.port} closed the connection before the answer ended"):
                await pool.post(srv.port, b"/", JSON, b"{}")
            assert srv.connections == 1
            await pool.close()

    run(main())


def test_close_delimited_and_chunked_answers_are_read_whole():
    async def handler(r, w, n):
        await read_request(r)
        if n == 1:  # no length: the body ends with the connection
            w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nall of ")
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(b"it")
        else:
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        await w.drain()

    async def main():
        async with Server(handler) as srv:
            pool = Pool()
            assert (await pool.post(srv.port, b"/", JSON, b"{}"))[2] == b"all of it"
            status, headers, body = await pool.post(srv.port, b"/", JSON, b"{}")
            assert body == b"abcde" and (b"transfer-encoding", b"chunked") in headers
            assert srv.connections == 2  # the first one ended with its answer
            await pool.close()

    run(main())


def test_streamed_chunks_arrive_as_sent_and_an_abandoned_stream_is_not_pooled():
    async def main():
        release = asyncio.Event()

        async def handler(r, w, n):
            while True:
                await read_request(r)
                w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                w.write(b"d\r\ndata: first\n\n\r\n")
                await w.drain()
                await release.wait()
                w.write(b"e\r\ndata: second\n\n\r\n0\r\n\r\n")
                await w.drain()

        async with Server(handler) as srv:
            pool = Pool()
            resp = await pool.post(srv.port, b"/", JSON, b"{}", stream=True)
            assert resp.status == 200
            it = resp.chunks()
            assert await it.__anext__() == b"data: first\n\n"  # before the service sent the rest
            release.set()
            assert [c async for c in it] == [b"data: second\n\n"]
            resp.release()
            release.clear()
            resp = await pool.post(srv.port, b"/", JSON, b"{}", stream=True)  # reused: read to the end
            assert srv.connections == 1
            it = resp.chunks()
            await it.__anext__()
            await it.aclose()
            resp.release()  # abandoned mid-answer: that connection must not carry another request
            release.set()
            await pool.post(srv.port, b"/", JSON, b"{}", stream=True)
            assert srv.connections == 2
            await pool.close()

    run(main())


def test_a_service_that_stops_sending_times_out_and_its_connection_is_dropped():
    async def handler(r, w, n):
        await read_request(r)
        if n == 1:
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nslow\r\n")
            await w.drain()
            await asyncio.sleep(0.25)  # alive, sending: under the read timeout per byte
            w.write(b"4\r\nslow\r\n")
            await w.drain()
        await asyncio.sleep(60)  # then nothing

    async def main():
        async with Server(handler) as srv:
            pool = Pool(read_timeout=0.4)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(UpstreamTimeout, match="sent nothing for 0.4s"):
                await pool.post(srv.port, b"/", JSON, b"{}")
            assert 0.6 < loop.time() - t0 < 2  # 0.25 s of sending, then 0.4 s of silence
            t0 = loop.time()
            with pytest.raises(UpstreamTimeout):
                await pool.post(srv.port, b"/", JSON, b"{}")
            assert loop.time() - t0 < 1.5
            assert srv.connections == 2  # the timed-out connection was not reused
            await pool.close()

    run(main())


def test_refused_port_and_broken_http_are_errors_naming_the_port():
    async def handler(r, w, n):
        await read_request(r)
        w.write(b"this is not HTTP\r\n\r\n")
        await w.drain()
        await asyncio.sleep(1)

    async def main():
        async with Server(handler) as srv:
            pool = Pool()
            with pytest.raises(UpstreamError, match=f"port {srv.port} answered with broken HTTP"):
                await pool.post(srv.port, b"/", JSON, b"{}")
            port = srv.port
        with pytest.raises(UpstreamError, match=f"port {port}: "):
            await pool.post(port, b"/", JSON, b"{}")  # the server is gone: refused
        await pool.close()

    run(main())


def test_a_slow_reader_pauses_the_service_instead_of_buffering_everything():
    piece = b"x" * 65536
    PIECES = 256  # 16 MiB: more than the kernel's socket buffers hold (4 MiB send, a growing receive)

    async def main():
        sent = 0

        async def handler(r, w, n):
            nonlocal sent
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(PIECES):
                w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await w.drain()
                sent += len(piece)
            w.write(b"0\r\n\r\n")
            await w.drain()

        async with Server(handler) as srv:
            pool = Pool()
            resp = await pool.post(srv.port, b"/", JSON, b"{}", stream=True)
            it = resp.chunks()
            got = len(await it.__anext__())
            await asyncio.sleep(0.5)  # a client that does not read
            conn = resp._conn
            assert conn.paused and conn.buffered <= HIGH_WATER + len(piece)
            assert sent < PIECES * len(piece) // 2  # the service was held back by TCP, not drained into memory
            async for c in it:
                got += len(c)
            assert got == PIECES * len(piece)
            resp.release()
            assert resp._conn.keep_alive() and pool.idle[srv.port][-1] is resp._conn  # read to the end: pooled
            await pool.close()

    run(main())


def test_connection_close_answers_are_not_pooled():
    async def handler(r, w, n):
        await read_request(r)
        w.write(answer(b"{}", b"connection: close"))
        await w.drain()
        await asyncio.sleep(0.5)  # even while the service keeps its end open a moment

    async def main():
        async with Server(handler) as srv:
            pool = Pool()
            for _ in range(3):
                assert (await pool.post(srv.port, b"/", JSON, b"{}"))[0] == 200
            assert srv.connections == 3
            await pool.close()

    run(main())


def test_bytes_sent_on_an_idle_connection_retire_it():
    async def handler(r, w, n):
        while True:
            await read_request(r)
            w.write(answer(b'{"conn": %d}' % n))
            await w.drain()
            await asyncio.sleep(0.05)  # then a parting 408 on the idle connection, left open
            w.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
            await w.drain()

    async def main():
        async with Server(handler) as srv:
            pool = Pool()
            assert (await pool.post(srv.port, b"/", JSON, b"{}"))[2] == b'{"conn": 1}'
            await asyncio.sleep(0.2)
            assert (await pool.post(srv.port, b"/", JSON, b"{}")) == (
                200, [(b"content-type", b"application/json"), (b"content-length", b"11")], b'{"conn": 2}')
            await pool.close()

    run(main())


def test_a_cancelled_request_closes_its_connection():
    async def main():
        closed = asyncio.Event()

        async def handler(r, w, n):
            await read_request(r)
            if await r.read(1) == b"":  # never answers; notices our side hang up
                closed.set()

        async with Server(handler) as srv:
            pool = Pool()
            task = asyncio.create_task(pool.post(srv.port, b"/", JSON, b"{}"))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(closed.wait(), 5)
            assert not pool.busy and not pool.idle.get(srv.port)
            await pool.close()

    run(main())
