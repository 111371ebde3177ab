"""Plain HTTP/1.1 to 127.0.0.1 for the engines' probes and commands on this machine.

The standard library's ``http.client`` with a small keep-alive pool: importing it costs a few ms,
where httpx (and httpcore, which also imports trio or anyio when they are installed) costs 60-130
ms per command, paid by every ``inv status`` for a handful of GETs to loopback ports.  A reused
connection the server has closed meanwhile is retried once on a fresh one (the server never saw
the request).  Answers are ``(status, text)`` with the engines' transport codes: 0 nothing
listens, -1 timed out, -2 any other transport error (the text says which).

An address given as an IPv4 literal is connected to directly (``HTTPConnection.sock`` set before
the first request), without ``getaddrinfo``: no resolver call and no IDNA codec per connection.
``preconnect`` opens the connection a probe will use, so the observation's "does anything listen
on this port" check and the probe that follows share one TCP connection.
"""

from __future__ import annotations

import http.client
import json as jsonlib
import socket
import threading
from typing import Any
from urllib.parse import urlencode, urlsplit

__all__ = ["LocalHttp"]

# the pool keeps at most this many idle connections per port
_IDLE_PER_PORT = 8


class LocalHttp:
    """Keep-alive connections to loopback ports, shared by threads (each request owns its connection)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def ask(self, method: str, url: str, *, timeout: float, json: Any = None, params: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, str]:
        parts = urlsplit(url)
        key = (parts.hostname or "127.0.0.1", parts.port or 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params)
        body = None
        hdrs = {"Accept": "*/*", **(headers or {})}
        if json is not None:
            body = jsonlib.dumps(json).encode()
            hdrs["Content-Type"] = "application/json"
        elif method == "POST":
            body = b""
        try:
            for attempt in (0, 1):
                conn, reused = self._take(key, timeout, fresh=attempt > 0)
                try:
                    conn.request(method, path, body=body, headers=hdrs)
                    resp = conn.getresponse()
                    data = resp.read()
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    conn.close()
                    if reused and attempt == 0:
                        # the server closed it while idle: it never saw this request; the others
                        # kept for that port are as old, so the retry is on a fresh connection
                        self._drop(key)
                        continue
                    raise
                except BaseException:
                    conn.close()
                    raise
                if resp.will_close:
                    conn.close()
                else:
                    self._give(key, conn)
                return resp.status, data.decode(_charset(resp.getheader("Content-Type", "")), "replace")
        except ConnectionRefusedError:
            return 0, "connection refused"
        except TimeoutError:
            return -1, "timed out"
        except (OSError, http.client.HTTPException) as exc:
            return -2, f"{type(exc).__name__}: {exc}"
        raise AssertionError("unreachable")  # pragma: no cover

    def preconnect(self, port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
        """Connect to ``host:port`` now and keep the connection for the next request there; False when
        the connection is refused (nothing listens), True otherwise (a timeout or another error is
        left for the request itself to meet and name).  An idle connection already kept there that
        the server has not closed answers True without a new connect (a server that went away
        closed its end: that connection is dropped and a fresh connect tells)."""
        key = (host, port)
        try:
            conn, _ = self._take(key, timeout)
        except ConnectionRefusedError:
            return False
        except OSError:
            return True
        self._give(key, conn)
        return True

    def _take(self, key: tuple[str, int], timeout: float, fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        """A kept connection the server has not closed (newest first), else a new one."""
        while not fresh:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None:
                break
            if _usable(conn):
                assert conn.sock is not None
                conn.sock.settimeout(timeout)
                return conn, True
            conn.close()
        return self._connect(key, timeout), False

    def _drop(self, key: tuple[str, int]) -> None:
        with self._lock:
            idle = self._idle.pop(key, [])
        for c in idle:
            c.close()

    @staticmethod
    def _connect(key: tuple[str, int], timeout: float) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(key[0], key[1], timeout=timeout)
        if _is_ipv4(key[0]):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(key)
            except BaseException:
                sock.close()
                raise
            conn.sock = sock
        else:
            conn.connect()
        if conn.sock is not None:
            # headers and body go in one write, but a server's delayed ACK must never wait on us
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _give(self, key: tuple[str, int], conn: http.client.HTTPConnection) -> None:
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


def _usable(conn: http.client.HTTPConnection) -> bool:
    """A kept connection still open at both ends with nothing unread on it: a peek that would block.
    End of stream (the server closed it, or its process is gone), an error, or bytes nobody asked
    for (a server's timeout notice) make it unusable."""
    sock = conn.sock
    if sock is None:
        return False
    prev = sock.gettimeout()
    try:
        sock.settimeout(0)
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        try:
            sock.settimeout(prev)
        except OSError:
            pass
    return False


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return False
    return True


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        if k.lower() == "charset" and v:
            try:
                "".encode(v.strip('"'))
                return v.strip('"')
            except LookupError:
                break
    return "utf-8"
