"""The web dashboard at ``/ui``: one page of plain HTML/CSS/JS shipped in the package
(``daemon/static/``), nothing fetched from elsewhere, live through a server-sent event stream.

Routes (the page shell and its two files need no key: they hold no data; everything under
``/ui/api/`` is checked exactly as the API is, ``Authorization: Bearer KEY``):

- ``GET /ui/`` (``/ui`` redirects), ``/ui/app.js``, ``/ui/app.css``
- ``GET /ui/api/state``: GPUs with VRAM per service, services, modes (``view.py``)
- ``GET /ui/api/events``: ``text/event-stream`` of ``state`` (whenever it changes), ``history``
  and ``action`` events (a dashboard action's plan, each step as it starts and ends with its
  time, its outcome). Read with fetch(), which can send the key; EventSource cannot.
- ``POST /ui/api/plan`` and ``POST /ui/api/run`` with JSON ``{"kind": "switch", "mode": M}`` or
  ``{"kind": "service", "action": "start"|"stop"|"sleep"|"wake", "service": S}``: the dry run, and
  the action itself (answered with the same event stream as it runs). POST with a JSON body only,
  so a page of another site cannot send one without a CORS preflight this server never grants.
- ``GET /ui/api/history?limit=N``, ``GET /ui/api/logs?service=S&n=N``
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from ..errors import GpumodError, PlanRefused
from . import view
from .model_manager import RouteError

STATIC = Path(__file__).resolve().parent / "static"
FILES = {"/ui/": ("index.html", "text/html; charset=utf-8"), "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/ui/app.css": ("app.css", "text/css; charset=utf-8")}
# the page builds every node with textContent; the policy is the second line of defence
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# uvicorn's graceful shutdown waits for every open response, so an event stream open for good
# would hold up `systemctl stop` as long as a dashboard is open: streams end when the server is
# told to stop (``Dashboard.end_streams_on_exit``) and, where that cannot be seen (a server run
# outside the main thread), after STREAM_S; the page reconnects at once
STREAM_S = 15.0
TICK_S = 0.2
QUEUE_MAX = 1000


STYLESHEET_LINK = b'<link rel="stylesheet" href="app.css">'


def inline_css(html: bytes, css: bytes) -> bytes:
    """The page with its stylesheet inlined: the first paint waits for no second request."""
    return html.replace(STYLESHEET_LINK, b"<style>" + css + b"</style>", 1)


def page_csp(css: bytes) -> str:
    """The policy, allowing the inlined stylesheet by its hash (and no other inline style)."""
    digest = base64.b64encode(hashlib.sha256(css).digest()).decode()
    return CSP.replace("style-src 'self'", f"style-src 'self' 'sha256-{digest}'")


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def strip_timing(detail: str) -> str:
    """The engine's "done" detail is "1.23s[ what it saw]": keep what it saw (the time is ours)."""
    head, _, rest = detail.partition(" ")
    try:
        float(head.removesuffix("s"))
    except ValueError:
        return detail
    return rest if head.endswith("s") else detail


def allowed_actions(state: str, can_sleep: bool) -> list[str]:
    if state == "active":
        return ["sleep", "stop"] if can_sleep else ["stop"]
    if state.startswith("asleep") or state == "unloaded":
        return ["wake", "stop"]
    if state == "stopped":
        return ["start"]
    return ["start", "stop"] if state == "error" else ["stop"]


class Dashboard:
    """The dashboard's server side for one daemon: snapshots, the event bus, dry runs, actions."""

    def __init__(self, manager: Any):
        self.m = manager
        self.subscribers: set[asyncio.Queue[bytes]] = set()
        self.busy: dict[str, Any] | None = None
        self.current: list[bytes] = []  # events of the action in progress (a page opened mid-way)
        self.next_id = 1
        self._key: tuple[Any, Any] = (None, None)  # the observation and catalog _extras were made from
        self._extras: dict[str, Any] = {}
        self._extras_lock = asyncio.Lock()
        # while a dashboard action runs, the page shows the host as observed after each step (the
        # manager's own observation is refreshed when the action ends)
        self.live_seen: Any = None
        self._observe_again = False
        self.closing = False
        self._tasks: set[asyncio.Task[None]] = set()  # the action and its watcher, held until done

    # -- what is shown ------------------------------------------------------------------------
    async def _observed(self, seen: Any) -> dict[str, Any]:
        """What depends only on one observation (bars, fits, uptimes): computed once per observation."""
        from ..dashboard import uptimes
        from ..switch import policy_for

        cat = self.m.cat
        async with self._extras_lock:
            if self._key[0] is seen and self._key[1] is cat:
                return self._extras
            t = await asyncio.to_thread(self.m.target)
            up = await asyncio.to_thread(t.host.read_file, f"{t.spec.procfs.rstrip('/')}/uptime")
            now_mono = float(up.split()[0]) if up and up.split() else None
            now = time.time()
            bars = view.gpu_bars(cat, seen)
            self._extras = {
                "host": t.spec.name, "header": t.header(), "gpus": bars, "service_gpus": view.service_gpus(bars),
                "service_gpu_mb": view.service_gpu_mb(bars),
                "modes": view.mode_fits(cat, seen, policy_for(t)),
                "started_at": {sid: round(now - s, 1) for sid, s in uptimes(seen, now_mono).items()},
                "observed_at": round(now, 1),
            }
            self._key = (seen, cat)
            return self._extras

    async def snapshot(self) -> dict[str, Any]:
        m = self.m
        seen = self.live_seen if self.busy is not None and self.live_seen is not None else m.seen
        try:
            ex = await self._observed(seen) if seen is not None else {}
        except GpumodError:  # the host is out of reach right now: show what the daemon knows
            ex = {}
        services = []
        for sid, p in m.cat.presets.items():
            o = seen.services.get(sid) if seen else None
            api_state = m.state_of(sid)
            state = view.ui_state(o, api_state)
            detail = m.errors.get(sid) or ""
            if not detail and o is not None and o.probe is not None and state in ("error", "loading"):
                detail = o.probe.detail
            services.append({
                "id": sid, "name": p.name, "driver": p.driver.value, "state": state, "api_state": api_state,
                "detail": detail, "port": p.port, "gpus": ex.get("service_gpus", {}).get(sid, []),
                "gpu_mb": ex.get("service_gpu_mb", {}).get(sid, {}),
                "in_flight": m.in_flight[sid], "waiting": m.waiting[sid], "vram_mb": (o.vram_mb if o else 0) or 0,
                "preset_vram_mb": p.vram_mb, "declared_mb": view.declared_mb(p, o),
                "started_at": ex.get("started_at", {}).get(sid), "leaving": sid in m.leaving,
                "actions": allowed_actions(state, p.can_sleep),
            })
        return {"host": ex.get("host", ""), "header": ex.get("header", ""), "mode": m.mode,
                "since": seen.record.since if seen else 0, "switching": bool(m.switching), "busy": self.busy,
                "gpu_error": seen.gpu_error if seen else "", "gpus": ex.get("gpus", []), "services": services,
                "modes": ex.get("modes", []), "observed_at": ex.get("observed_at", 0)}

    async def history(self, limit: int = 30) -> list[dict[str, Any]]:
        from ..history import load

        def rows() -> list[dict[str, Any]]:
            return load(self.m.target().spec.name, limit)

        return await asyncio.to_thread(rows)

    async def logs(self, sid: str, n: int) -> dict[str, Any]:
        p = self._preset(sid)

        def tail() -> dict[str, Any]:
            t = self.m.target()
            return {"service": sid, "unit": p.unit, "manager": t.manager.kind, "text": t.manager.logs(p.unit, n)}

        return await asyncio.to_thread(tail)

    def reobserve(self) -> None:
        """A step ended: observe again now rather than at the next tick."""
        self._observe_again = True

    async def _watch_action(self) -> None:
        """While an action runs: observe the host for the page about twice a second and after every
        step, so the bars and states move with the steps."""
        from ..observe import observe

        while self.busy is not None:
            self._observe_again = False
            try:
                seen = await asyncio.to_thread(observe, self.m.target())
            except GpumodError:
                seen = None
            if self.busy is not None and seen is not None:
                self.live_seen = seen
            for _ in range(10):
                if self._observe_again or self.busy is None:
                    break
                await asyncio.sleep(0.05)

    # -- the event bus --------------------------------------------------------------------------
    def publish(self, msg: bytes) -> None:
        for q in list(self.subscribers):
            try:
                q.put_nowait(msg)
            except asyncio.QueueFull:  # a reader that stopped reading: it reconnects and gets a fresh state
                self.subscribers.discard(q)

    def end_streams_on_exit(self) -> None:
        """Chain onto the server's SIGINT/SIGTERM handlers (uvicorn's, which it restores when it
        stops): the event streams end as soon as it is told to stop. Main thread only."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            prev = signal.getsignal(sig)
            if not callable(prev) or getattr(prev, "gpumod_dashboard", False):
                continue

            def chained(signum: int, frame: Any, prev: Any = prev) -> None:
                self.closing = True
                prev(signum, frame)

            chained.gpumod_dashboard = True  # type: ignore[attr-defined]
            signal.signal(sig, chained)

    async def events(self) -> AsyncIterator[bytes]:
        self.end_streams_on_exit()
        q: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_MAX)
        self.subscribers.add(q)
        try:
            yield b"retry: 1000\n\n"
            try:
                yield sse("history", await self.history())
            except Exception:  # noqa: BLE001 - advisory, as everywhere: the stream goes on without it
                pass
            for msg in list(self.current):
                yield msg
            last = ""
            end = time.monotonic() + STREAM_S
            while time.monotonic() < end and not self.closing:
                snap = await self.snapshot()
                blob = json.dumps(snap, sort_keys=True)
                if blob != last:
                    last = blob
                    yield sse("state", snap)
                try:
                    yield await asyncio.wait_for(q.get(), TICK_S)
                    while not q.empty():
                        yield q.get_nowait()
                except asyncio.TimeoutError:
                    pass
        finally:
            self.subscribers.discard(q)

    # -- dry runs and actions -------------------------------------------------------------------
    def _preset(self, sid: Any) -> Any:
        if not isinstance(sid, str) or sid not in self.m.cat.presets:
            raise RouteError(404, f"unknown service {sid!r}; known: {', '.join(sorted(self.m.cat.presets))}")
        return self.m.cat.presets[sid]

    def parse(self, body: Any) -> tuple[str, str, str]:
        """(kind, action, name): ("switch", "switch", MODE) or ("service", ACTION, SERVICE)."""
        if not isinstance(body, dict):
            raise RouteError(400, 'give {"kind": "switch", "mode": M} or {"kind": "service", "action": A, "service": S}')
        if body.get("kind") == "switch":
            mode = body.get("mode")
            if not isinstance(mode, str) or mode not in self.m.cat.modes:
                raise RouteError(404, f"unknown mode {mode!r}; known: {', '.join(sorted(self.m.cat.modes))}")
            return "switch", "switch", mode
        if body.get("kind") == "service":
            action = body.get("action")
            if action not in view.SERVICE_ACTIONS:
                raise RouteError(400, f"unknown action {action!r}; known: {', '.join(view.SERVICE_ACTIONS)}")
            return "service", str(action), self._preset(body.get("service")).id
        raise RouteError(400, 'kind must be "switch" or "service"')

    @staticmethod
    def title(kind: str, action: str, name: str) -> str:
        return f"switch to {name}" if kind == "switch" else f"{action} {name}"

    async def plan(self, kind: str, action: str, name: str) -> dict[str, Any]:
        """The dry run (the one run path's own observe and plan): the steps, or the refusal with its
        reasons and alternatives."""
        from ..pipeline import SwitchTo, prepare
        from ..plan import ServiceOp

        head = {"kind": kind, "action": action, "name": name, "title": self.title(kind, action, name)}
        op = SwitchTo(name) if kind == "switch" else ServiceOp(action, name)
        try:
            plan, _ = await asyncio.to_thread(prepare, self.m.target(), op)
        except PlanRefused as exc:
            return {**head, **view.refusal_dict(exc)}
        out = {**head, "refused": False, **view.plan_dict(plan, self.m.cat)}
        if plan.nothing_to_do:
            out["notes"] = [plan.nothing_to_do, *out["notes"]]
        return out

    def start(self, kind: str, action: str, name: str) -> asyncio.Queue[bytes | None]:
        """Start an action in the background; its events go to every dashboard and to the queue
        returned (ended by None). The action goes on if the page that asked for it leaves."""
        if self.busy is not None:
            raise RouteError(409, f"busy: {self.busy['title']} is running; wait for it to finish")
        aid = self.next_id
        self.next_id += 1
        own: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.busy = {"id": aid, "title": self.title(kind, action, name), "since": time.time()}
        self.current = []

        def emit(data: dict[str, Any]) -> None:
            msg = sse("action", {"id": aid, **data})
            self.current.append(msg)
            own.put_nowait(msg)
            self.publish(msg)

        async def run() -> None:
            try:
                await self._run(kind, action, name, emit)
            except Exception as exc:  # noqa: BLE001 - a bug must end the action, not hang the page
                emit({"phase": "end", "ok": False, "error": f"{type(exc).__name__}: {exc}", "state": []})
            finally:
                self.busy = None
                self.live_seen = None
                own.put_nowait(None)
                try:
                    self.publish(sse("history", await self.history()))
                except Exception:  # noqa: BLE001 - the history is advisory; the page keeps the old one
                    pass

        for coro in (run(), self._watch_action()):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return own

    async def _run(self, kind: str, action: str, name: str, emit: Callable[[dict[str, Any]], None]) -> None:
        from ..services import service_action

        t0 = time.perf_counter()
        preview = await self.plan(kind, action, name)
        if preview.get("refused"):
            emit({"phase": "refused", **preview})
            emit({"phase": "end", "ok": False, "error": preview["message"], "state": preview["reasons"],
                  "duration_s": round(time.perf_counter() - t0, 3)})
            return
        emit({"phase": "plan", **preview})
        if preview.get("converged"):
            emit({"phase": "end", "ok": True, "message": "; ".join(preview["notes"]) or "nothing to do",
                  "duration_s": round(time.perf_counter() - t0, 3)})
            return
        try:
            if kind == "switch":
                res = await self._switch(name, emit)
                message = f"switched to {name}"
            else:
                on_event = self._step_events(emit)
                async with self.m.switch_lock:
                    try:
                        message = await asyncio.to_thread(service_action, self.m.target(), action, name, on_event=on_event)
                    finally:
                        await self.m.refresh()
                self.reobserve()
                res = {}
        except PlanRefused as exc:  # what changed between the dry run and the run
            emit({"phase": "refused", **view.refusal_dict(exc)})
            emit({"phase": "end", "ok": False, "error": str(exc), "state": exc.details(),
                  "duration_s": round(time.perf_counter() - t0, 3)})
            return
        except (GpumodError, RouteError) as exc:
            lines = list(getattr(exc, "state_lines", None) or (exc.details() if isinstance(exc, GpumodError) else []))
            emit({"phase": "end", "ok": False, "error": str(exc), "state": lines,
                  "duration_s": round(time.perf_counter() - t0, 3)})
            return
        emit({"phase": "end", "ok": True, "message": message, "summary": res.get("summary", {}),
              "duration_s": round(time.perf_counter() - t0, 3)})

    async def _switch(self, mode: str, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """The daemon's own switch (its lock, its draining) with the engine's step events streamed."""
        return dict(await self.m.switch_mode(mode, on_event=self._step_events(emit)))

    def _step_events(self, emit: Callable[[dict[str, Any]], None]) -> Callable[[str, Any, str], None]:
        """The executor's step events (in its thread) as the page's start/done/fail events."""
        loop = asyncio.get_running_loop()
        index = [-1]
        started: dict[int, float] = {}

        def on_step(phase: str, kind: str, text: str, detail: str, at: float) -> None:
            if phase == "start":
                index[0] += 1
                started[index[0]] = at
                emit({"phase": "start", "index": index[0], "kind": kind, "step": text})
            elif phase in ("done", "fail"):
                secs = at - started.get(index[0], at)
                emit({"phase": phase, "index": index[0], "kind": kind, "step": text, "seconds": round(secs, 3),
                      "detail": strip_timing(detail) if phase == "done" else detail})
                self.reobserve()
            else:
                emit({"phase": "info", "index": index[0], "kind": kind, "step": text, "detail": detail})

        def on_event(phase: str, step: Any, detail: str) -> None:  # the executor's thread
            loop.call_soon_threadsafe(on_step, phase, step.kind, step.describe(), detail, time.perf_counter())

        return on_event


def web_routes(manager: Any, authorized: Callable[[Any], bool]) -> list[Any]:
    """The dashboard's routes, to add to the daemon's; ``authorized(request)`` is the API's key check."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
    from starlette.routing import Route

    board = Dashboard(manager)
    files = {path: ((STATIC / name).read_bytes(), ctype) for path, (name, ctype) in FILES.items()}
    files["/ui/"] = (inline_css(files["/ui/"][0], files["/ui/app.css"][0]), files["/ui/"][1])
    stream_headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "code": status}}, status_code=status)

    def static(path: str) -> Any:
        body, ctype = files[path]
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if ctype.startswith("text/html"):
            headers.update({"Content-Security-Policy": page_csp(files["/ui/app.css"][0]), "Referrer-Policy": "no-referrer"})

        async def serve(request: Request) -> Response:
            return Response(body, media_type=ctype, headers=headers)

        return serve

    def api(handler: Any, *, post: bool = False) -> Any:
        async def wrapped(request: Request) -> Response:
            if not authorized(request):
                return error(401, "missing or wrong API key (Authorization: Bearer ...)")
            body = None
            if post:
                ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype != "application/json":
                    return error(415, "send the body as JSON (Content-Type: application/json)")
                try:
                    body = await request.json()
                except ValueError:
                    return error(400, "the body is not JSON")
            try:
                return await (handler(request, body) if post else handler(request))
            except RouteError as exc:
                return error(exc.status, str(exc))
            except GpumodError as exc:
                return error(500, "\n".join([str(exc), *exc.details()]))

        return wrapped

    def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
        try:
            return max(lo, min(hi, int(request.query_params.get(name, default))))
        except ValueError:
            raise RouteError(400, f"{name} must be a number") from None

    async def redirect(request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    async def state(request: Request) -> Response:
        return JSONResponse(await board.snapshot())

    async def events(request: Request) -> Response:
        return StreamingResponse(board.events(), media_type="text/event-stream", headers=stream_headers)

    async def history(request: Request) -> Response:
        return JSONResponse(await board.history(int_param(request, "limit", 30, 1, 500)))

    async def logs(request: Request) -> Response:
        return JSONResponse(await board.logs(request.query_params.get("service", ""), int_param(request, "n", 200, 1, 5000)))

    async def plan(request: Request, body: Any) -> Response:
        return JSONResponse(await board.plan(*board.parse(body)))

    async def run(request: Request, body: Any) -> Response:
        own = board.start(*board.parse(body))

        async def stream() -> AsyncIterator[bytes]:
            while (msg := await own.get()) is not None:
                yield msg

        return StreamingResponse(stream(), media_type="text/event-stream", headers=stream_headers)

    return [
        Route("/ui", redirect, methods=["GET"]),
        *(Route(path, static(path), methods=["GET"]) for path in files),
        Route("/ui/api/state", api(state), methods=["GET"]),
        Route("/ui/api/events", api(events), methods=["GET"]),
        Route("/ui/api/history", api(history), methods=["GET"]),
        Route("/ui/api/logs", api(logs), methods=["GET"]),
        Route("/ui/api/plan", api(plan, post=True), methods=["POST"]),
        Route("/ui/api/run", api(run, post=True), methods=["POST"]),
    ]
