"""The daemon's HTTP face (Starlette): the manager API (homeGPT-compatible) and OpenAI routes.

Manager API: ``GET /health``, ``GET /models``, ``POST /switch`` (``{"model_id": ID}`` or
``{"mode": NAME}``), ``POST /reload``, ``GET /metrics``.  OpenAI: ``GET /v1/models``,
``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` routed by the body's
``model``; the response (SSE included) streams through chunk by chunk.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from contextlib import asynccontextmanager
from typing import Any

from .core import ModelManager, RouteError
from .metrics import Metrics
from .upstream import Pool, UpstreamError, UpstreamTimeout

FORWARDED = (b"content-type", b"accept", b"accept-encoding")
# not passed back from a service: hop-by-hop headers and framing (uvicorn frames the answer anew),
# and Date / Server, which uvicorn writes itself (a second Date header is a protocol error)
NOT_PASSED_BACK = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"content-length",
                   b"proxy-authenticate", b"proxy-authorization", b"date", b"server"}
# OpenAI's error envelope: {"error": {"message", "type", "code"}}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 409: "conflict_error",
               429: "rate_limit_error", 502: "upstream_error", 503: "unavailable_error", 504: "upstream_timeout"}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "code": status}}


INFER_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def create_app(manager: ModelManager, metrics: Metrics, *, api_key: str | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    # The upstream hop is daemon/upstream.py's pool (why: see that module); every other HTTP in
    # gpumod is httpx.
    state: dict[str, Any] = {}

    def error(status: int, message: str, retry_after: int | None = None) -> JSONResponse:
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        return JSONResponse(error_body(status, message), status_code=status, headers=headers)

    def authorized(request: Request) -> bool:
        if not api_key:
            return True
        given = request.headers.get("authorization", "")
        return secrets.compare_digest(given, f"Bearer {api_key}")

    def guard(handler: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            if not authorized(request):
                return error(401, "missing or wrong API key (Authorization: Bearer ...)")
            try:
                return await handler(request)
            except RouteError as exc:
                return error(exc.status, str(exc), exc.retry_after)

        return wrapped

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "mode": manager.mode, "switching": manager.switching})

    async def models(request: Request) -> Response:
        seen = manager.seen
        out = []
        for sid, p in manager.cat.presets.items():
            o = seen.services.get(sid) if seen else None
            out.append({"id": sid, "name": p.name, "model": p.served_model, "state": manager.state_of(sid),
                        "vram_mb": (o.vram_mb if o else 0) or 0, "preset_vram_mb": p.vram_mb, "port": p.port,
                        "in_flight": manager.in_flight[sid], "waiting": manager.waiting[sid],
                        "error": manager.errors.get(sid)})
        return JSONResponse({"mode": manager.mode, "models": out})

    async def switch(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            raise RouteError(400, "body must be JSON: {\"model_id\": ID} or {\"mode\": NAME}") from None
        if not isinstance(body, dict) or not (body.get("model_id") or body.get("mode")):
            raise RouteError(400, "give {\"model_id\": ID} or {\"mode\": NAME}")
        try:
            if body.get("mode"):
                res = await manager.switch_mode(str(body["mode"]))
            else:
                sid = manager.resolve(body["model_id"])
                res = await manager.ensure(sid)
        except RouteError:
            raise
        except Exception as exc:  # noqa: BLE001 - GpumodError and friends: say what state we are in
            details = getattr(exc, "state_lines", [])
            return JSONResponse({"ok": False, "error": str(exc), "state": details}, status_code=500)
        return JSONResponse({"ok": True, **res})

    async def reload(request: Request) -> Response:
        return JSONResponse({"ok": True, **(await manager.reload())})

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

    async def send_json(send: Any, status: int, body: bytes, retry_after: int | None = None) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry_after:
            headers.append((b"retry-after", str(retry_after).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def client_gone(receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def infer(scope: Any, receive: Any, send: Any) -> None:
        """The hot path, as plain ASGI: every OpenAI request goes through here, so it skips the
        framework's request/response objects (measured: scripts/bench_router.py)."""
        hdrs = scope["headers"]
        if api_key:
            auth = next((v for k, v in hdrs if k == b"authorization"), b"").decode("latin-1")
            if not secrets.compare_digest(auth, f"Bearer {api_key}"):
                await send_json(send, 401, error_bytes(401, "missing or wrong API key (Authorization: Bearer ...)"))
                return
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        raw = b"".join(chunks)
        # metrics count by service id, and "-" for a request naming no known model: labels from
        # what clients type would grow without bound in a long-lived daemon
        label = "-"
        try:
            try:
                body = json.loads(raw)
            except ValueError:
                raise RouteError(400, "the request body is not JSON") from None
            model = body.get("model") if isinstance(body, dict) else None
            sid = label = manager.resolve(model)
            await manager.acquire(sid)
        except RouteError as exc:
            metrics.request(label, exc.status)
            metrics.error(label, str(exc.status))
            await send_json(send, exc.status, error_bytes(exc.status, str(exc)), exc.retry_after)
            return
        p = manager.cat.presets[sid]
        if model != manager.upstream_names[sid]:  # asked by id or served name: the service knows its own name only
            body["model"] = manager.upstream_names[sid]
            raw = json.dumps(body).encode()
        target = scope["raw_path"] or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        headers = [(k, v) for k, v in hdrs if k in FORWARDED]
        streaming = bool(body.get("stream"))
        try:
            try:
                if streaming:
                    resp = await state["upstream"].post(p.port, target, headers, raw, stream=True)
                    status, rheaders = resp.status, resp.headers
                else:  # the common case: one buffered answer
                    status, rheaders, content = await state["upstream"].post(p.port, target, headers, raw)
            except UpstreamTimeout as exc:
                metrics.request(label, 504)
                metrics.error(label, "upstream-timeout")
                await send_json(send, 504, error_bytes(504, f"{sid} on port {p.port} did not answer in time: {exc}"))
                return
            except UpstreamError as exc:
                metrics.request(label, 502)
                metrics.error(label, "upstream")
                await send_json(send, 502, error_bytes(502, f"{sid} on port {p.port} failed: {exc}"))
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
            await manager.release(sid)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        state["upstream"] = Pool(connect_timeout=5, read_timeout=600)
        await manager.start()
        loop = asyncio.get_running_loop()
        try:  # `systemctl reload`-style: SIGHUP re-reads the catalog like POST /reload
            import signal

            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(manager.reload()))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests), or no signals
            pass
        try:
            yield
        finally:
            await manager.stop()
            await state["upstream"].close()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/models", guard(models), methods=["GET"]),
        Route("/switch", guard(switch), methods=["POST"]),
        Route("/reload", guard(reload), methods=["POST"]),
        Route("/metrics", guard(metrics_route), methods=["GET"]),
        Route("/v1/models", guard(v1_models), methods=["GET"]),
    ]
    from .web import web_routes  # the dashboard at /ui, behind the same key check

    routes += web_routes(manager, authorized)
    framework = Starlette(routes=routes, lifespan=lifespan)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in INFER_PATHS:
            await infer(scope, receive, send)
        else:
            await framework(scope, receive, send)

    return app
