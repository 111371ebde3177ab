"""The local host's HTTP client (http.client with a keep-alive pool): every body framing, keep-alive, a stale connection, and the
transport codes the engines read (0 refused, -1 timed out, -2 anything else)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from gpumod_tasks.host.http_local import LocalHttp


@contextmanager
def raw_server(answer: Callable[[socket.socket, bytes, int], bool]) -> Iterator[tuple[int, list[int]]]:
    """A loopback server that reads each request's head (and Content-Length body) and lets
    ``answer(conn, request, n)`` write the bytes back; it returns whether to keep the connection.
    Yields (port, the number of requests per connection)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    per_conn: list[int] = []

    def serve(conn: socket.socket) -> None:
        i = len(per_conn)
        per_conn.append(0)
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                n = next((int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")[1:])
                          if k.strip().lower() == b"content-length"), 0)
                while len(buf) < n:
                    buf += conn.recv(65536)
                body, buf = buf[:n], buf[n:]
                per_conn[i] += 1
                if not answer(conn, head + b"\r\n\r\n" + body, per_conn[i]):
                    return

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield srv.getsockname()[1], per_conn
    finally:
        srv.close()


def test_content_length_chunked_and_read_to_close_bodies_and_keep_alive():
    seen: list[bytes] = []

    def answer(conn: socket.socket, req: bytes, n: int) -> bool:
        seen.append(req)
        if b"/chunked" in req:
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain; charset=latin-1\r\n\r\n"
                         b"3\r\nab\xe9\r\n4;x=y\r\ncdef\r\n0\r\nTrailer: 1\r\n\r\n")
            return True
        if b"/close" in req:
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\nLoading model")
            return False
        body = '{"ok": "é"}'.encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: application/json\r\n\r\n%s" % (len(body), body))
        return True

    with raw_server(answer) as (port, per_conn):
        http = LocalHttp()
        base = f"http://127.0.0.1:{port}"
        assert http.ask("GET", base + "/one", timeout=5) == (200, '{"ok": "é"}')
        assert http.ask("GET", base + "/chunked", timeout=5) == (200, "abécdef")
        assert http.ask("POST", base + "/sleep", timeout=5, params={"level": 1, "mode": "wait"},
                        json={"model": "m"}) == (200, '{"ok": "é"}')
        assert per_conn == [3], "one kept-alive connection for three requests"
        assert seen[2].startswith(b"POST /sleep?level=1&mode=wait HTTP/1.1\r\n")
        assert b"Content-Type: application/json" in seen[2] and seen[2].endswith(b'{"model": "m"}')
        assert http.ask("GET", base + "/close", timeout=5) == (503, "Loading model")
        assert http.ask("GET", base + "/one", timeout=5)[0] == 200
        assert per_conn == [4, 1], "a connection the server closes is not reused"
        http.close()


def test_a_kept_connection_the_server_dropped_is_retried_once_on_a_fresh_one():
    def answer(conn: socket.socket, req: bytes, n: int) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return False  # closes after answering, without saying so: the client's idle connection goes stale

    with raw_server(answer) as (port, per_conn):
        http = LocalHttp()
        for _ in range(3):
            assert http.ask("POST", f"http://127.0.0.1:{port}/sleep", timeout=5) == (200, "ok")
        assert per_conn == [1, 1, 1], "every request reached the server exactly once"


def test_refused_timed_out_and_not_http_are_the_engines_codes():
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    http = LocalHttp()
    assert http.ask("GET", f"http://127.0.0.1:{port}/health", timeout=2) == (0, "connection refused")

    silent = threading.Event()
    with raw_server(lambda conn, req, n: silent.wait(5) and False) as (port, _):
        assert http.ask("GET", f"http://127.0.0.1:{port}/health", timeout=0.2) == (-1, "timed out")
        silent.set()

    def garbage(conn: socket.socket, req: bytes, n: int) -> bool:
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        return False

    with raw_server(garbage) as (port, _):
        status, text = http.ask("GET", f"http://127.0.0.1:{port}/health", timeout=2)
        assert status == -2 and "BadStatusLine" in text


def test_preconnect_says_who_listens_and_the_next_request_uses_its_connection():
    def answer(conn: socket.socket, req: bytes, n: int) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    with raw_server(answer) as (port, per_conn):
        http = LocalHttp()
        assert http.preconnect(port) is True
        assert http.preconnect(port) is True, "a kept connection answers without a second connect"
        assert http.ask("GET", f"http://127.0.0.1:{port}/health", timeout=5) == (200, "ok")
        assert per_conn == [1], "the check and the request shared one connection"
        http.close()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    dead = free.getsockname()[1]
    free.close()
    assert LocalHttp().preconnect(dead) is False


def test_kept_connections_to_a_server_that_is_gone_meet_the_refusal():
    """Two idle connections (two lanes asked at once) to a server that then dies: the listen check
    and a request both see it refused, never a stale connection's reset."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    served: list[socket.socket] = []

    def serve() -> None:  # answers only once both requests are in: each has its own connection
        for _ in range(2):
            conn, _ = srv.accept()
            served.append(conn)
            conn.recv(65536)
        for conn in served:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    http = LocalHttp()
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: http.ask("GET", f"http://127.0.0.1:{port}/health", timeout=5), range(2)))
    t.join(5)
    assert answers == [(200, "ok")] * 2 and len(served) == 2, "two connections kept"
    for c in served:  # the server dies: its connections close and nothing listens any more
        c.close()
    srv.close()
    assert http.preconnect(port) is False
    assert http.ask("GET", f"http://127.0.0.1:{port}/health", timeout=5) == (0, "connection refused")
