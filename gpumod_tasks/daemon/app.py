"""The daemon's HTTP face (Starlette): the manager API (homeGPT-compatible) and OpenAI routes.

Manager API: ``GET /health``, ``GET /models``, ``POST /switch`` (``{"model_id": ID}`` or
``{"mode": NAME}``), ``POST /reload``, ``GET /metrics``.  OpenAI: ``GET /v1/models``,
``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` routed by the body's
``model``; the response (SSE included) streams through chunk by chunk.

Before any route, every request passes the front door (``webguard``): a ``Host`` that names this
server (421 otherwise: DNS rebinding), no foreign ``Origin`` (403), ``application/json`` for every
POST (415: a cross-site form or ``text/plain`` fetch cannot switch modes), a body within
``max_body_bytes`` (413) read within ``body_timeout_s`` (408).  The request head must arrive
within ``header_timeout_s`` (the connection is closed), so slow clients cannot hold sockets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import GpumodError
from ..webguard import Guard, header, is_json
from .metrics import Metrics
from .model_manager import ModelManager, RouteError
from .upstream import Pool, UpstreamError, UpstreamTimeout, UpstreamUnreachable

log = logging.getLogger("gpumod.router")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 32 * 1024 * 1024  # a long chat with a few images as base64 fits
    body_timeout_s: float = 60.0  # the whole body, once the head is in
    header_timeout_s: float = 10.0  # the request head, from the connection's first byte (or its opening)
    keep_alive_s: int = 5  # an idle kept-alive connection is closed after this long (uvicorn's default)
    lost_retry_s: float = 0.25  # a request whose service's port refused it re-observes, waits this long between tries

FORWARDED = (b"content-type", b"accept", b"accept-encoding")
# not passed back from a service: hop-by-hop headers and framing (uvicorn frames the answer anew),
# and Date / Server, which uvicorn writes itself (a second Date header is a protocol error)
NOT_PASSED_BACK = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"content-length",
                   b"proxy-authenticate", b"proxy-authorization", b"date", b"server"}
# OpenAI's error envelope: {"error": {"message", "type", "code"}}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               408: "timeout_error", 409: "conflict_error", 413: "invalid_request_error", 415: "invalid_request_error",
               421: "permission_error", 422: "invalid_request_error", 429: "rate_limit_error", 502: "upstream_error",
               503: "unavailable_error", 504: "upstream_timeout"}


def error_body(status: int, message: str, problems: list[str] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "code": status}
    if problems:
        err["problems"] = problems
    return {"error": err}


INFER_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
UNAUTHORIZED = "missing or wrong API key (Authorization: Bearer ...)"


class _BodyError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def loads(raw: bytes) -> Any:
    """JSON from a client: anything unparsable, nesting too deep included, is a 400."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise RouteError(400, "the request body is not JSON (or nests too deeply)") from None


@dataclass(frozen=True)
class Announce:
    """Register the daemon on its box while it serves (``daemon/announce.py``): how a CLI run on
    the same target finds it to drain the requests it serves."""

    bind: str
    port: int
    api_key: str = ""
    api_key_file: str = ""


def create_app(manager: ModelManager, metrics: Metrics, *, api_key: str | None = None, guard: Guard | None = None,
               limits: Limits | None = None, announce: Announce | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    # The upstream hop is daemon/upstream.py's pool (why: see that module); every other HTTP in
    # gpumod is httpx.
    state: dict[str, Any] = {}
    door = guard if guard is not None else Guard(token=api_key)
    if api_key and not door.token:
        door = Guard(bind=door.bind, allowed_hosts=door.allowed_hosts, token=api_key)
    lim = limits or Limits()

    def error(status: int, message: str, retry_after: int | None = None, problems: list[str] | None = None) -> JSONResponse:
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        return JSONResponse(error_body(status, message, problems), status_code=status, headers=headers)

    def authorized(request: Request) -> bool:
        return door.authorized(header(request.headers.raw, b"authorization"))

    def refused(method: str, path: str, status: int, message: str) -> None:
        log.info("refused %s %s: %d %s", method, path[:80], status, message)

    def guard_route(handler: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            if not authorized(request):
                refused(request.method, request.url.path, 401, UNAUTHORIZED)
                return error(401, UNAUTHORIZED)
            try:
                return await handler(request)
            except RouteError as exc:
                refused(request.method, request.url.path, exc.status, str(exc))
                return error(exc.status, str(exc), exc.retry_after, exc.problems)

        return wrapped

    async def health(request: Request) -> Response:
        rec = manager.seen.record if manager.seen else None
        if rec is not None and rec.failed:  # the last run failed: say where, and what runs, not the last good mode
            return JSONResponse({"status": "failed", "mode": None, "previous_mode": manager.mode, "switching": manager.switching,
                                 "failure": rec.failure, "detail": rec.failure_line()})
        return JSONResponse({"status": "ok", "mode": manager.mode, "switching": manager.switching})

    async def models(request: Request) -> Response:
        from ..gpu_use import gpu_uses, service_gpu_mb

        seen = manager.seen
        uses = gpu_uses(seen) if seen else []
        per = service_gpu_mb(uses)
        out = []
        for sid, p in manager.cat.presets.items():
            o = seen.services.get(sid) if seen else None
            out.append({"id": sid, "name": p.name, "model": p.served_model, "state": manager.state_of(sid),
                        "vram_mb": (o.vram_mb if o else 0) or 0, "preset_vram_mb": p.vram_mb, "port": p.port,
                        "in_flight": manager.in_flight[sid], "waiting": manager.waiting[sid],
                        "error": manager.errors.get(sid), "gpus": sorted(per.get(sid, {})),
                        "gpu_mb": {str(i): mb for i, mb in sorted(per.get(sid, {}).items())}})
        return JSONResponse({"mode": manager.mode, "models": out, "gpus": [u.as_dict() for u in uses]})

    async def switch(request: Request) -> Response:
        body = loads(await request.body())
        if not isinstance(body, dict) or not (body.get("model_id") or body.get("mode")):
            raise RouteError(400, "give {\"model_id\": ID} or {\"mode\": NAME}")
        try:
            if body.get("mode"):
                mode = body["mode"]
                if not isinstance(mode, str):
                    raise RouteError(400, "'mode' must be a string")
                log.info("switch to mode %s requested", mode[:80])
                res = await manager.switch_mode(mode)
            else:
                sid = manager.resolve(body["model_id"])
                log.info("switch for %s requested", sid)
                res = await manager.ensure(sid)
        except RouteError:
            raise
        except Exception as exc:  # noqa: BLE001 - GpumodError and friends: say what state we are in
            details = getattr(exc, "state_lines", [])
            log.error("switch failed: %s", exc)
            if not isinstance(exc, GpumodError):
                log.debug("traceback", exc_info=True)
            return JSONResponse({"ok": False, "error": str(exc), "state": details}, status_code=500)
        log.info("switch done: %s in %.2f s (mode %s)", res.get("action"), res.get("duration_s", 0.0), res.get("mode"))
        return JSONResponse({"ok": True, **res})

    async def reload(request: Request) -> Response:
        try:
            res = await manager.reload()
        except GpumodError as exc:
            log.error("reload failed: %s", exc)
            return JSONResponse({"ok": False, "error": str(exc), "state": getattr(exc, "state_lines", [])}, status_code=500)
        return JSONResponse({"ok": True, **res})

    async def drain(request: Request) -> Response:
        """``{"services": [...], "hold_s": N}``: another run on the box is about to sleep or stop
        them; answers once their requests in flight are done (``ModelManager.hold``)."""
        body = loads(await request.body())
        services = body.get("services") if isinstance(body, dict) else None
        hold_s = body.get("hold_s", 900) if isinstance(body, dict) else None
        if (not isinstance(services, list) or not all(isinstance(x, str) for x in services)
                or not isinstance(hold_s, (int, float)) or not 0 < hold_s <= 3600):
            raise RouteError(400, 'give {"services": [ID, ...], "hold_s": SECONDS (up to 3600)}')
        return JSONResponse({"ok": True, **(await manager.hold(services, float(hold_s)))})

    async def drain_end(request: Request) -> Response:
        body = loads(await request.body())
        services = body.get("services") if isinstance(body, dict) else None
        if not isinstance(services, list) or not all(isinstance(x, str) for x in services):
            raise RouteError(400, 'give {"services": [ID, ...]}')
        await manager.unhold(services)
        return JSONResponse({"ok": True})

    async def metrics_route(request: Request) -> Response:
        body, ctype = metrics.render(manager)
        return Response(body, media_type=ctype)

    async def v1_models(request: Request) -> Response:
        data = []
        for sid, p in manager.cat.presets.items():
            data.append({"id": p.served_model, "object": "model", "owned_by": "gpumod", "service": sid,
                         "state": manager.state_of(sid), "ready": manager.ready(sid)})
        return JSONResponse({"object": "list", "data": data})

    def error_bytes(status: int, message: str) -> bytes:
        return json.dumps(error_body(status, message)).encode()

    async def send_json(send: Any, status: int, body: bytes, retry_after: int | None = None, close: bool = False) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry_after:
            headers.append((b"retry-after", str(retry_after).encode()))
        if close:  # the rest of the request was not read: the connection cannot carry another
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def client_gone(receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def answer_error(send: Any, scope: Any, label: str, status: int, message: str, reason: str | None = None,
                           retry_after: int | None = None) -> None:
        metrics.request(label, status)
        metrics.error(label, reason or str(status))
        refused(scope["method"], scope["path"], status, message)
        await send_json(send, status, error_bytes(status, message), retry_after)

    async def infer(scope: Any, raw: bytes, receive: Any, send: Any) -> None:
        """The hot path, as plain ASGI: every OpenAI request goes through here, so it skips the
        framework's request/response objects (measured: scripts/bench_router.py)."""
        hdrs = scope["headers"]
        if not door.authorized(header(hdrs, b"authorization")):
            await answer_error(send, scope, "-", 401, UNAUTHORIZED, "401")
            return
        # metrics count by service id, and "-" for a request naming no known model: labels from
        # what clients type would grow without bound in a long-lived daemon
        label = "-"
        try:
            body = loads(raw)
            model = body.get("model") if isinstance(body, dict) else None
            sid = label = manager.resolve(model)
            if model != manager.upstream_names[sid]:  # asked by id or served name: the service knows its own name only
                body["model"] = manager.upstream_names[sid]
                try:
                    raw = json.dumps(body).encode()
                except (ValueError, RecursionError):
                    raise RouteError(400, "the request body nests too deeply") from None
            await manager.acquire(sid)
        except RouteError as exc:
            await answer_error(send, scope, label, exc.status, str(exc), None, exc.retry_after)
            return
        held = True
        p = manager.cat.presets[sid]
        target = scope["raw_path"] or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        headers = [(k, v) for k, v in hdrs if k in FORWARDED]
        streaming = bool(body.get("stream"))
        deadline = time.monotonic() + manager.opts.request_timeout_s
        try:
            while True:
                tried_at = time.monotonic()
                try:
                    if streaming:
                        resp = await state["upstream"].post(p.port, target, headers, raw, stream=True)
                        status, rheaders = resp.status, resp.headers
                    else:  # the common case: one buffered answer
                        status, rheaders, content = await state["upstream"].post(p.port, target, headers, raw)
                    break
                except UpstreamUnreachable as exc:
                    # the service died (or restarts) since it was last seen: the request never reached
                    # it, so it waits for the service like any request for a stopped model
                    if time.monotonic() >= deadline:
                        await answer_error(send, scope, label, 502, f"{sid} on port {p.port} failed: {exc}", "upstream")
                        return
                    held = False
                    await manager.release(sid)
                    await manager.lost(sid, tried_at)
                    if manager.ready(sid):  # still looks up (its process not yet gone): look again shortly
                        await asyncio.sleep(lim.lost_retry_s)
                        await manager.lost(sid, time.monotonic())
                    try:
                        await manager.acquire(sid)
                    except RouteError as err:
                        await answer_error(send, scope, label, err.status, str(err), None, err.retry_after)
                        return
                    held = True
                except UpstreamTimeout as exc:
                    await answer_error(send, scope, label, 504, f"{sid} on port {p.port} did not answer in time: {exc}",
                                       "upstream-timeout")
                    return
                except UpstreamError as exc:
                    await answer_error(send, scope, label, 502, f"{sid} on port {p.port} failed: {exc}", "upstream")
                    return
            metrics.request(label, status)
            out = [(k, v) for k, v in rheaders if k.lower() not in NOT_PASSED_BACK]
            if not streaming:
                out.append((b"content-length", str(len(content)).encode()))
                await send({"type": "http.response.start", "status": status, "headers": out})
                await send({"type": "http.response.body", "body": content})
                return
            # a client that leaves mid-stream (a chat's Stop button) closes the upstream connection,
            # which ends the generation there (vLLM and llama.cpp abort on disconnect) and frees the
            # model's in-flight slot at once instead of when the answer would have ended
            gone = asyncio.ensure_future(client_gone(receive))
            gone.add_done_callback(lambda _: resp.release())
            try:
                await send({"type": "http.response.start", "status": status, "headers": out})
                async for chunk in resp.chunks():  # each chunk as it arrives: SSE is never buffered
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            except UpstreamError:
                if not gone.done() or gone.cancelled():
                    raise
                metrics.error(label, "client-gone")
            finally:
                gone.cancel()
                resp.release()
        finally:
            if held:
                await manager.release(sid)

    async def read_body(scope: Any, receive: Any) -> bytes:
        """The whole body, within the size and time limits."""
        declared = header(scope["headers"], b"content-length")
        if declared.isdigit() and int(declared) > lim.max_body_bytes:
            raise _BodyError(413, f"the body ({int(declared)} bytes) is over the limit of {lim.max_body_bytes} bytes")
        chunks, size = [], 0
        while True:  # the time it may take is the protocol's (http_protocol): it closes a slow body
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _BodyError(0, "the client left")
            piece = msg.get("body", b"")
            size += len(piece)
            if size > lim.max_body_bytes:
                raise _BodyError(413, f"the body is over the limit of {lim.max_body_bytes} bytes")
            chunks.append(piece)
            if not msg.get("more_body"):
                return b"".join(chunks)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        state["upstream"] = Pool(connect_timeout=5, read_timeout=600)
        await manager.start()
        loop = asyncio.get_running_loop()
        try:  # `systemctl reload`-style: SIGHUP re-reads the catalog like POST /reload
            import signal

            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(sighup_reload()))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests), or no signals
            pass
        log.info("serving %d services, %d modes; current mode %s; %s", len(manager.cat.presets), len(manager.cat.modes),
                 manager.mode or "(none)", "API key required" if door.token else "no API key")
        registered = await asyncio.to_thread(register) if announce is not None else None
        try:
            yield
        finally:
            log.info("stopping (services keep running)")
            if registered:
                await asyncio.to_thread(unregister, registered)
            await manager.stop()
            await state["upstream"].close()

    def register() -> str | None:
        """Write ``router.json`` (0600: it may hold the API key) in the target's state dir."""
        import os

        from .announce import registration_file, render

        assert announce is not None
        t = manager.target()
        path = registration_file(t.state_dir)
        try:
            t.host.write_file(path, render(os.getpid(), announce.port, announce.bind, api_key=announce.api_key,
                                           api_key_file=announce.api_key_file), mode=0o600)
        except (OSError, GpumodError) as exc:
            log.warning("cannot register at %s (a CLI run on this box will not drain through the daemon): %s", path, exc)
            return None
        return path

    def unregister(path: str) -> None:
        """Remove ``router.json`` if it is still this process's (another daemon may have taken over)."""
        import os

        from .announce import parse

        t = manager.target()
        link = parse(t.host.read_file(path))
        if link is not None and link.pid == os.getpid():
            t.host.run(["rm", "-f", "--", path], ok=(0, 1))

    async def sighup_reload() -> None:
        log.info("SIGHUP: reloading the catalog")
        try:
            await manager.reload()
        except RouteError:
            pass  # logged with its problems by reload itself
        except Exception as exc:  # noqa: BLE001 - a signal handler's task has nobody to report to
            log.error("reload failed: %s", exc)
            log.debug("traceback", exc_info=True)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/models", guard_route(models), methods=["GET"]),
        Route("/switch", guard_route(switch), methods=["POST"]),
        Route("/reload", guard_route(reload), methods=["POST"]),
        Route("/drain", guard_route(drain), methods=["POST"]),
        Route("/drain/end", guard_route(drain_end), methods=["POST"]),
        Route("/metrics", guard_route(metrics_route), methods=["GET"]),
        Route("/v1/models", guard_route(v1_models), methods=["GET"]),
    ]
    from .web import web_routes  # the dashboard at /ui, behind the same key check

    routes += web_routes(manager, authorized)
    framework = Starlette(routes=routes, lifespan=lifespan)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await framework(scope, receive, send)
            return
        no = door.refusal(scope["headers"])
        if no is not None:
            refused(scope["method"], scope["path"], *no)
            await send_json(send, no[0], error_bytes(*no))
            return
        if scope["method"] != "POST":
            await framework(scope, receive, send)
            return
        if not is_json(header(scope["headers"], b"content-type")):
            msg = "POST bodies must be sent as Content-Type: application/json"
            refused(scope["method"], scope["path"], 415, msg)
            await send_json(send, 415, error_bytes(415, msg))
            return
        try:
            raw = await read_body(scope, receive)
        except _BodyError as exc:
            if exc.status:
                refused(scope["method"], scope["path"], exc.status, str(exc))
                await send_json(send, exc.status, error_bytes(exc.status, str(exc)), close=True)
            return
        if scope["path"] in INFER_PATHS:
            await infer(scope, raw, receive, send)
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await framework(scope, replay, send)

    return app


def http_protocol(header_timeout_s: float, body_timeout_s: float) -> type:
    """uvicorn's httptools protocol with deadlines for a request's head and body: uvicorn closes
    idle kept-alive connections (``timeout_keep_alive``) but waits forever for a request that
    trickles in. A request that arrives whole in one read (nearly all) arms no timer at all: the
    timers are set after a read only when the request is still incomplete. On expiry the client gets
    408 and the connection is closed (the app, waiting for the body, sees the client leave)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class DeadlineProtocol(HttpToolsProtocol):  # type: ignore[misc]
        _phase: str | None = "head"  # what of the current request is still to come: head, body, or nothing
        _timer: Any = None
        _timer_phase: str | None = None
        _got_bytes = False

        def _set_timer(self) -> None:
            if self._timer_phase == self._phase:
                return
            if self._timer is not None:
                self._timer.cancel()
                self._timer = self._timer_phase = None
            if self._phase is not None and not self.transport.is_closing():
                limit = header_timeout_s if self._phase == "head" else body_timeout_s
                self._timer = self.loop.call_later(limit, self._expired, limit)
                self._timer_phase = self._phase

        def _expired(self, limit: float) -> None:
            what, self._timer, self._timer_phase = self._phase, None, None
            if self.transport.is_closing() or what is None:
                return
            log.debug("closing a connection whose request %s took over %gs", what, limit)
            if self._got_bytes:
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
                                     b"connection: close\r\ncontent-length: 25\r\n\r\nthe request took too long")
            self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._set_timer()

        def data_received(self, data: bytes) -> None:
            self._got_bytes = True
            super().data_received(data)
            self._set_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._phase = "head"

        def on_headers_complete(self) -> None:
            self._phase = "body"
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._phase = None
            self._got_bytes = False
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # the keep-alive timer now waits for the next request
            self._set_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = self._timer_phase = None
            super().connection_lost(exc)

    return DeadlineProtocol


def server_config(app: Any, host: str, port: int, limits: Limits | None = None) -> Any:
    """uvicorn's settings for the daemon (the task and the tests use the same)."""
    import uvicorn

    lim = limits or Limits()
    return uvicorn.Config(app, host=host, port=port, http=http_protocol(lim.header_timeout_s, lim.body_timeout_s), lifespan="on",
                          timeout_keep_alive=lim.keep_alive_s, log_level="warning", access_log=False,
                          proxy_headers=False, server_header=True, date_header=True, log_config=None)
