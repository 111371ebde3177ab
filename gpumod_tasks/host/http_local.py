"""Plain HTTP/1.1 to 127.0.0.1 for the engines' probes and commands on this machine.

A few dozen lines over a socket with a small keep-alive pool: httpx (and httpcore, which also
imports trio or anyio when they are installed) costs 60-130 ms of every command, and even the
standard library's ``http.client`` brings ``email`` and ``ssl`` (~15 ms), for a handful of
requests to loopback ports.  It speaks what the servers gpumod runs answer (vLLM's uvicorn,
llama-server, the simulator's stand-ins): a status line, headers, and a body by
``Content-Length``, chunked, or up to the close.  A reused connection the server has closed
meanwhile is retried once on a fresh one (the server never saw the request).  Answers are
``(status, text)`` with the engines' transport codes: 0 nothing listens, -1 timed out, -2 any
other transport error (the text says which).
"""

from __future__ import annotations

import json as jsonlib
import socket
import threading
from typing import Any, BinaryIO
from urllib.parse import urlencode, urlsplit

__all__ = ["LocalHttp"]

# the pool keeps at most this many idle connections per port
_IDLE_PER_PORT = 8
_MAX_LINE = 65536
_MAX_HEADERS = 200


class _Stale(Exception):
    """A reused connection was closed by the server before it answered."""


class BadAnswer(Exception):
    """The bytes that came back are not an HTTP/1.x answer."""


class _Conn:
    __slots__ = ("rfile", "sock")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.rfile: BinaryIO = sock.makefile("rb")

    def close(self) -> None:
        try:
            self.rfile.close()
        finally:
            self.sock.close()


class LocalHttp:
    """Keep-alive connections to loopback ports, shared by threads (each request owns its connection)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._lock = threading.Lock()

    def ask(self, method: str, url: str, *, timeout: float, json: Any = None, params: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, str]:
        parts = urlsplit(url)
        key = (parts.hostname or "127.0.0.1", parts.port or 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if params:
            target += ("&" if "?" in target else "?") + urlencode(params)
        body = b""
        hdrs = {"Host": f"{key[0]}:{key[1]}", "Accept": "*/*", **(headers or {})}
        if json is not None:
            body = jsonlib.dumps(json).encode()
            hdrs["Content-Type"] = "application/json"
        if body or method in ("POST", "PUT", "PATCH"):
            hdrs["Content-Length"] = str(len(body))
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        request = head.encode("latin-1") + body
        try:
            for attempt in (0, 1):
                conn, reused = self._take(key, timeout)
                try:
                    status, reason_text, keep = _exchange(conn, request, reused, method)
                except _Stale:
                    conn.close()
                    if attempt == 0:
                        continue  # the server closed it while idle: it never saw this request
                    raise ConnectionResetError("the server closed the connection") from None
                except BaseException:
                    conn.close()
                    raise
                if keep:
                    self._give(key, conn)
                else:
                    conn.close()
                return status, reason_text
        except ConnectionRefusedError:
            return 0, "connection refused"
        except TimeoutError:
            return -1, "timed out"
        except (OSError, BadAnswer, ValueError) as exc:
            return -2, f"{type(exc).__name__}: {exc}"
        raise AssertionError("unreachable")  # pragma: no cover

    def _take(self, key: tuple[str, int], timeout: float) -> tuple[_Conn, bool]:
        with self._lock:
            idle = self._idle.get(key)
            conn = idle.pop() if idle else None
        if conn is not None:
            conn.sock.settimeout(timeout)
            return conn, True
        host, port = key
        try:
            socket.inet_aton(host)
        except OSError:  # a name: resolve it as usual
            sock = socket.create_connection((host, port), timeout=timeout)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                # bytes: a str address would be run through the idna codec (and import it)
                sock.connect((host.encode("ascii"), port))
            except BaseException:
                sock.close()
                raise
        # headers and body go in one write, but a server's delayed ACK must never wait on us
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(sock), False

    def _give(self, key: tuple[str, int], conn: _Conn) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < _IDLE_PER_PORT:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            c.close()


def _exchange(conn: _Conn, request: bytes, reused: bool, method: str) -> tuple[int, str, bool]:
    """Send one request, read its answer: (status, text, whether the connection can be reused)."""
    try:
        conn.sock.sendall(request)
        line = conn.rfile.readline(_MAX_LINE + 1)
    except (ConnectionResetError, BrokenPipeError):
        if reused:
            raise _Stale from None
        raise
    if not line:
        if reused:
            raise _Stale
        raise ConnectionResetError("the server closed the connection without answering")
    while True:
        status, version = _status_line(line)
        headers = _headers(conn.rfile)
        if status >= 200 or status == 101:
            break
        line = conn.rfile.readline(_MAX_LINE + 1)  # 1xx: the real answer follows
        if not line:
            raise ConnectionResetError("the server closed the connection after an interim answer")
    conn_hdr = headers.get("connection", "").lower()
    keep = version == "HTTP/1.1" and "close" not in conn_hdr
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        data = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        data = _chunked(conn.rfile)
    elif "content-length" in headers:
        n = int(headers["content-length"])
        if n < 0:
            raise BadAnswer(f"Content-Length {n}")
        data = _exactly(conn.rfile, n)
    else:
        data = conn.rfile.read()
        keep = False
    return status, data.decode(_charset(headers.get("content-type", "")), "replace"), keep


def _status_line(line: bytes) -> tuple[int, str]:
    if len(line) > _MAX_LINE:
        raise BadAnswer("status line too long")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise BadAnswer(f"not an HTTP answer: {line[:80]!r}")
    return int(parts[1]), parts[0]


def _headers(rfile: BinaryIO) -> dict[str, str]:
    out: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        line = rfile.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise BadAnswer("header line too long")
        if line in (b"\r\n", b"\n"):
            return out
        if not line:
            raise BadAnswer("the answer ended inside its headers")
        k, sep, v = line.decode("latin-1").partition(":")
        if not sep:
            raise BadAnswer(f"bad header line: {line[:80]!r}")
        k = k.strip().lower()
        out[k] = f"{out[k]}, {v.strip()}" if k in out else v.strip()
    raise BadAnswer("too many headers")


def _exactly(rfile: BinaryIO, n: int) -> bytes:
    data = rfile.read(n)
    if len(data) < n:
        raise BadAnswer(f"the body ended after {len(data)} of {n} bytes")
    return data


def _chunked(rfile: BinaryIO) -> bytes:
    parts: list[bytes] = []
    while True:
        line = rfile.readline(_MAX_LINE + 1)
        if not line:
            raise BadAnswer("the body ended inside a chunk size")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while rfile.readline(_MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        parts.append(_exactly(rfile, size))
        _exactly(rfile, 2)  # the CRLF after the chunk


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        if k.lower() == "charset" and v:
            name = v.strip('"')
            try:
                "".encode(name)
            except LookupError:
                break
            return name
    return "utf-8"
