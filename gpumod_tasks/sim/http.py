"""A tiny routing layer over the stdlib HTTP server, for the stand-ins (stdlib only).

Stand-ins must run on an agentless box that has python3 and nothing else, so they cannot use
Starlette; this keeps their request plumbing (JSON bodies, query strings, SSE) in one place.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Request:
    def __init__(self, handler: BaseHTTPRequestHandler, method: str):
        self.handler = handler
        self.method = method
        parts = urlsplit(handler.path)
        self.path = parts.path
        self.query: dict[str, list[str]] = parse_qs(parts.query, keep_blank_values=True)
        length = int(handler.headers.get("Content-Length") or 0)
        self.body = handler.rfile.read(length) if length else b""
        self.headers = handler.headers

    def arg(self, name: str, default: str | None = None) -> str | None:
        vals = self.query.get(name)
        return vals[0] if vals else default

    def json(self) -> Any:
        if not self.body:
            return None
        return json.loads(self.body)


class Response:
    def __init__(self, status: int = 200, body: Any = None, *, content_type: str = "application/json",
                 stream: Iterator[bytes] | None = None, headers: dict[str, str] | None = None):
        self.status = status
        self.stream = stream
        self.content_type = content_type
        self.headers = headers or {}
        if body is None:
            self.data = b""
        elif isinstance(body, bytes):
            self.data = body
        elif isinstance(body, str):
            self.data = body.encode()
        else:  # compact JSON, as Starlette's JSONResponse writes it
            self.data = json.dumps(body, separators=(",", ":")).encode()


Handler = Callable[[Request], Response]


class App:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.not_found: Handler = lambda req: Response(404, {"detail": "Not Found"})

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.routes[(method, path)] = fn
            return fn

        return deco

    def dispatch(self, req: Request) -> Response:
        fn = self.routes.get((req.method, req.path))
        if fn is None:
            if any(p == req.path for (_, p) in self.routes):
                return Response(405, {"detail": "Method Not Allowed"})
            return self.not_found(req)
        return fn(req)


def make_handler(app: App) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        # headers and body are separate writes: without TCP_NODELAY, Nagle plus the client's delayed
        # ACK adds ~40 ms to every keep-alive response (real servers set it too)
        disable_nagle_algorithm = True
        protocol_version = "HTTP/1.1"
        server_version = "gpumod-sim"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass

        def _handle(self, method: str) -> None:
            try:
                req = Request(self, method)
                resp = app.dispatch(req)
            except Exception as exc:  # a stand-in bug must still answer, like a server's 500
                resp = Response(500, {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error", "code": 500}})
            try:
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.content_type)
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                if resp.stream is None:
                    self.send_header("Content-Length", str(len(resp.data)))
                    self.end_headers()
                    if method != "HEAD":
                        self.wfile.write(resp.data)
                else:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Cache-Control", "no-cache")
                    self.end_headers()
                    for chunk in resp.stream:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

    return H


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def bind(app: App, host: str, port: int) -> Server:
    """Bind the port without listening yet (connections are refused until ``activate``)."""
    srv = Server((host, port), make_handler(app), bind_and_activate=False)
    try:
        srv.server_bind()
    except OSError as exc:
        sys.stderr.write(f"ERROR: [Errno {exc.errno}] error while attempting to bind on address ({host!r}, {port}): {exc.strerror}\n")
        srv.server_close()
        raise SystemExit(1) from exc
    return srv


def serve(srv: Server, stop: threading.Event | None = None) -> None:
    srv.server_activate()
    srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.serve_forever(poll_interval=0.2)
