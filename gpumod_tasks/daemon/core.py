"""The model manager behind the router daemon: which service serves a request's ``model``, making it
ready with the smallest change, queues while it gets ready, draining before a sleep, idle sleep,
health watching and periodic reconciliation.  It is a thin layer over the switch engine (the same
plan/execute code and the same host lock), run from asyncio with the blocking work in threads.

Decisions:
- Ready means the service is running and awake and no switch in progress is about to take it away.
- The smallest change: a service of the current mode is woken/started alone (``service.start``);
  otherwise the daemon switches to the mode containing it whose plan has the fewest steps and fits.
- Requests waiting for models are served grouped by model, oldest model first: A B A B arriving
  during a switch become one change for A (both A requests), then one for B.
- A service about to be slept or stopped is drained first: new requests to it wait, requests in
  flight get up to ``drain_s`` to finish.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from ..catalog.model import Catalog, Driver, Preset, SleepMode
from ..errors import GpumodError, PlanRefused
from ..observe import Observed, SvcState, observe
from ..plan import Plan, Sleep, Stop
from ..render import router_model_name


class RouteError(Exception):
    """A request the daemon answers itself: status code, message, optional Retry-After."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass
class Options:
    request_timeout_s: float = 300.0  # how long a request may wait for its model to become ready
    queue_max: int = 256  # waiting requests per model beyond which 503 answers at once
    concurrency: int = 64  # in-flight requests per model beyond which 429 answers
    drain_s: float = 30.0  # how long a switch waits for in-flight requests of a leaving service
    reconcile_s: float = 5.0  # re-observe the host this often (drift: killed services)
    health_failures: int = 3  # consecutive unhealthy observations before a running service is 'error'
    restart_unhealthy: bool = False  # restart a service that hangs while its process lives
    idle_check_s: float = 1.0


@dataclass
class Waiter:
    event: asyncio.Event = field(default_factory=asyncio.Event)
    error: str = ""


def upstream_name(p: Preset) -> str:
    """What the service itself calls its model: a llama.cpp router its models-dir entry, others the
    served name (vLLM's --served-model-name, llama-server's --alias)."""
    if p.driver is Driver.LLAMACPP and p.sleep_mode is SleepMode.ROUTER:
        return router_model_name(p)
    return p.served_model


def model_map(cat: Catalog) -> dict[str, str]:
    """Request ``model`` -> service id: the served model name, the id itself, and the service's own
    name for it (a request under another of these names is forwarded under the service's own)."""
    out: dict[str, str] = {}
    for p in cat.presets.values():
        out.setdefault(p.id, p.id)
        out.setdefault(upstream_name(p), p.id)
        out[p.served_model] = p.id
    return out


class ModelManager:
    def __init__(self, open_target: Callable[[], AbstractContextManager[Any]], load_catalog: Callable[[], Catalog],
                 opts: Options | None = None, metrics: Any = None):
        self.open_target = open_target
        self.load_catalog = load_catalog
        self.opts = opts or Options()
        self.metrics = metrics
        self._use_catalog(load_catalog())
        self.seen: Observed | None = None
        self.mode: str | None = None
        self.errors: dict[str, str] = {}
        self.unhealthy_count: collections.Counter[str] = collections.Counter()
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.waiting: collections.Counter[str] = collections.Counter()
        self.last_request: dict[str, float] = {}
        self.leaving: set[str] = set()
        self.switching = False
        self.pending: collections.OrderedDict[str, Waiter] = collections.OrderedDict()
        self.kick = asyncio.Event()
        self.switch_lock = asyncio.Lock()
        self.drained = asyncio.Condition()
        self.draining = False
        self.tasks: list[asyncio.Task[Any]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._target_cm: Any = None
        self._target: Any = None
        self._target_lock = threading.Lock()

    # -- the host ---------------------------------------------------------------------------
    def target(self) -> Any:
        with self._target_lock:
            if self._target is None:
                self._target_cm = self.open_target()
                self._target = self._target_cm.__enter__()
                self._target.catalog = self.cat
                self._target.ensure_sim()
            return self._target

    def close_target(self) -> None:
        with self._target_lock:
            if self._target_cm is not None:
                try:
                    self._target_cm.__exit__(None, None, None)
                finally:
                    self._target_cm = self._target = None

    def _observe(self) -> Observed:
        try:
            return observe(self.target())
        except GpumodError:
            self.close_target()  # a lost connection: reopen on the next call
            return observe(self.target())

    async def refresh(self) -> Observed:
        seen = await asyncio.to_thread(self._observe)
        self.seen = seen
        self.mode = seen.record.mode
        if self.metrics:
            self.metrics.observed(self, seen)
        return seen

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.refresh()  # adopt what runs: no restarts, no reloads
        self.tasks = [asyncio.create_task(self._worker()), asyncio.create_task(self._reconcile_loop()),
                      asyncio.create_task(self._idle_loop())]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await asyncio.to_thread(self.close_target)

    # -- state ------------------------------------------------------------------------------
    def state_of(self, sid: str) -> str:
        """active | sleeping | stopped | switching | error (homeGPT's vocabulary)."""
        if sid in self.errors:
            return "error"
        if sid in self.leaving or (sid in self.pending and self.switching):
            return "switching"
        o = self.seen.services.get(sid) if self.seen else None
        if o is None:
            return "stopped"
        # a crashed or killed service is not running: "stopped" (the next request restarts it)
        return {SvcState.RUNNING: "active", SvcState.SLEEPING: "sleeping", SvcState.STOPPED: "stopped",
                SvcState.FAILED: "stopped", SvcState.STARTING: "switching"}.get(o.state, "error")

    def ready(self, sid: str) -> bool:
        o = self.seen.services.get(sid) if self.seen else None
        return o is not None and o.state is SvcState.RUNNING and sid not in self.leaving and sid not in self.errors

    def resolve(self, model: Any) -> str:
        if not isinstance(model, str) or not model:
            raise RouteError(400, "the request has no 'model'")
        sid = self.models.get(model)
        if sid is None:
            raise RouteError(404, f"model {model!r} is not served here; known: {', '.join(sorted(self.models))}")
        return sid

    # -- requests ---------------------------------------------------------------------------
    async def acquire(self, sid: str) -> None:
        """Wait until ``sid`` is ready (making it so), then count the request in flight."""
        if self.in_flight[sid] >= self.opts.concurrency:
            raise RouteError(429, f"{sid}: {self.in_flight[sid]} requests in flight (limit {self.opts.concurrency})", 1)
        deadline = time.monotonic() + self.opts.request_timeout_s
        while not self.ready(sid):
            if self.waiting[sid] >= self.opts.queue_max:
                raise RouteError(503, f"{sid}: {self.waiting[sid]} requests already waiting for it", 5)
            w = self.pending.get(sid)
            if w is None:
                w = self.pending[sid] = Waiter()
            self.kick.set()
            self.waiting[sid] += 1
            if self.metrics:
                self.metrics.queue(sid, self.waiting[sid])
            try:
                await asyncio.wait_for(w.event.wait(), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise RouteError(503, f"{sid} did not become ready within {self.opts.request_timeout_s:g}s "
                                      f"({'a switch is running' if self.switching else 'still loading'})", 10) from None
            finally:
                self.waiting[sid] -= 1
                if self.metrics:
                    self.metrics.queue(sid, self.waiting[sid])
            if w.error:
                raise RouteError(503, w.error, 30)
        self.in_flight[sid] += 1
        self.last_request[sid] = time.monotonic()

    async def release(self, sid: str) -> None:
        self.in_flight[sid] -= 1
        self.last_request[sid] = time.monotonic()
        if self.draining:  # only a switch waiting to sleep/stop a service listens
            async with self.drained:
                self.drained.notify_all()

    # -- making a model ready ---------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            await self.kick.wait()
            self.kick.clear()
            while self.pending:
                sid, w = next(iter(self.pending.items()))
                try:
                    await self.ensure(sid)
                except (GpumodError, RouteError) as exc:
                    w.error = f"{sid} could not be made ready: {exc}"
                except Exception as exc:  # noqa: BLE001 - a bug must not kill the worker
                    w.error = f"{sid} could not be made ready: {type(exc).__name__}: {exc}"
                self.pending.pop(sid, None)
                w.event.set()

    async def ensure(self, sid: str) -> dict[str, Any]:
        """The smallest change that makes ``sid`` ready; returns what was done."""
        async with self.switch_lock:
            await self.refresh()
            if self.ready(sid):
                return {"service": sid, "action": "none", "duration_s": 0.0}
            self.errors.pop(sid, None)
            mode = self.mode
            if mode in self.cat.modes and sid in self.cat.modes[mode].service_ids:
                return await self._service_start(sid)
            target_mode = await asyncio.to_thread(self._best_mode_for, sid)
            return await self._switch(target_mode, sid)

    def _best_mode_for(self, sid: str) -> str:
        from ..switch import make_plan

        candidates = [m for m in self.cat.modes.values() if sid in m.service_ids]
        if not candidates:
            raise RouteError(409, f"{sid} is in no mode; add it to one (modes/*.yaml)")
        best: tuple[int, str] | None = None
        refused = []
        for m in candidates:
            try:
                plan, _ = make_plan(self.target(), m.id)
            except PlanRefused as exc:
                refused.append(f"{m.id}: {exc}")
                continue
            cost = len([s for s in plan.steps if s.kind != "record"])
            if best is None or cost < best[0]:
                best = (cost, m.id)
        if best is None:
            raise RouteError(409, f"no mode containing {sid} fits: " + "; ".join(refused))
        return best[1]

    async def _service_start(self, sid: str) -> dict[str, Any]:
        from ..services import service_action

        t0 = time.perf_counter()
        self.switching = True
        try:
            msg = await asyncio.to_thread(service_action, self.target(), "start", sid, quiesce=False)
        finally:
            self.switching = False
            await self.refresh()
        took = time.perf_counter() - t0
        if self.metrics:
            self.metrics.wake(sid, took)
        return {"service": sid, "action": msg, "duration_s": round(took, 3), "mode": self.mode}

    async def _switch(self, mode: str, for_sid: str | None = None, on_event: Any = None) -> dict[str, Any]:
        from ..switch import switch

        assert self.loop is not None
        loop = self.loop

        def on_plan(plan: Plan) -> None:
            leaving = {s.service for s in plan.steps if isinstance(s, (Stop, Sleep))}
            self.leaving = leaving
            # drain (in the switch's thread, with the host lock held): wait for in-flight requests
            asyncio.run_coroutine_threadsafe(self._drain(leaving), loop).result()

        t0 = time.perf_counter()
        self.switching = True
        try:
            out = await asyncio.to_thread(switch, self.target(), mode, on_plan=on_plan, quiesce=False, on_event=on_event)
        finally:
            self.switching = False
            self.leaving = set()
            await self.refresh()
        took = time.perf_counter() - t0
        if self.metrics:
            self.metrics.switch(mode, took)
        rep = out.report.as_dict() if out.report else {}
        return {"service": for_sid, "action": f"switched to {mode}", "mode": mode, "duration_s": round(took, 3),
                "summary": rep.get("summary", {})}

    async def _drain(self, leaving: set[str]) -> None:
        deadline = time.monotonic() + self.opts.drain_s
        self.draining = True
        try:
            await self._drain_wait(leaving, deadline)
        finally:
            self.draining = False

    async def _drain_wait(self, leaving: set[str], deadline: float) -> None:
        async with self.drained:
            while any(self.in_flight[s] > 0 for s in leaving):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(self.drained.wait(), left)
                except asyncio.TimeoutError:
                    break

    async def switch_mode(self, mode: str, on_event: Any = None) -> dict[str, Any]:
        """``on_event(phase, step, detail)``: the engine's step events, from the switch's thread."""
        if mode not in self.cat.modes:
            raise RouteError(404, f"unknown mode {mode!r}; known: {', '.join(sorted(self.cat.modes))}")
        async with self.switch_lock:
            return await self._switch(mode, on_event=on_event)

    # -- background loops -------------------------------------------------------------------
    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.opts.reconcile_s)
            if self.switch_lock.locked():
                continue
            try:
                async with self.switch_lock:
                    seen = await self.refresh()
                await self._watch_health(seen)
            except GpumodError:
                continue
            # put to sleep or stopped behind the daemon's back while it had requests in flight: a
            # sleeping vLLM holds such requests without an answer, so wake it and they complete
            for sid, n in list(self.in_flight.items()):
                o = seen.services.get(sid)
                if n > 0 and o is not None and o.state in (SvcState.SLEEPING, SvcState.STOPPED) and sid not in self.pending:
                    self.pending[sid] = Waiter()
                    self.kick.set()

    async def _watch_health(self, seen: Observed) -> None:
        from ..services import service_action

        for sid, o in seen.services.items():
            if o.state is SvcState.UNHEALTHY:
                self.unhealthy_count[sid] += 1
            else:
                self.unhealthy_count.pop(sid, None)
                if sid in self.errors and o.state is SvcState.RUNNING:
                    self.errors.pop(sid, None)
                continue
            if self.unhealthy_count[sid] >= self.opts.health_failures:
                detail = o.probe.detail if o.probe else ""
                self.errors[sid] = f"unhealthy for {self.unhealthy_count[sid]} checks while its process lives: {detail}"
                if self.opts.restart_unhealthy:
                    async with self.switch_lock:
                        try:
                            await asyncio.to_thread(service_action, self.target(), "restart", sid, quiesce=False)
                            self.errors.pop(sid, None)
                            self.unhealthy_count.pop(sid, None)
                        except GpumodError as exc:
                            self.errors[sid] = f"restart after hanging failed: {exc}"
                        await self.refresh()

    async def _idle_loop(self) -> None:
        from ..services import service_action

        while True:
            await asyncio.sleep(self.opts.idle_check_s)
            mode = self.cat.modes.get(self.mode or "")
            if mode is None or self.switch_lock.locked():
                continue
            now = time.monotonic()
            for ms in mode.services:
                if not ms.sleep_on_idle or not self.ready(ms.id) or self.in_flight[ms.id] or ms.id in self.pending:
                    continue
                # a service never asked for since the daemon started counts from now
                idle = now - self.last_request.setdefault(ms.id, now)
                if idle < ms.sleep_on_idle or not self.cat.presets[ms.id].can_sleep:
                    continue
                async with self.switch_lock:
                    try:
                        await asyncio.to_thread(service_action, self.target(), "sleep", ms.id)
                    except GpumodError as exc:
                        self.errors[ms.id] = f"idle sleep failed: {exc}"
                    await self.refresh()

    # -- catalog ----------------------------------------------------------------------------
    def _use_catalog(self, cat: Catalog) -> None:
        """The catalog, and what routing derives from it: request names -> service, service -> its own name."""
        self.cat, self.models = cat, model_map(cat)
        self.upstream_names = {sid: upstream_name(p) for sid, p in cat.presets.items()}

    async def reload(self) -> dict[str, Any]:
        """Re-read the catalog; re-render units and restart only running services whose unit changed."""
        from ..services import service_action
        from ..units import install_all

        async with self.switch_lock:
            cat = self.load_catalog()
            t = self.target()
            old_units = {p.id: p.unit for p in self.cat.presets.values()}
            t.catalog = cat
            self._use_catalog(cat)
            rep = await asyncio.to_thread(install_all, t)
            changed_units = set(rep.changed)
            seen = await self.refresh()
            restarted = []
            for sid, o in seen.services.items():
                if cat.presets[sid].unit in changed_units and old_units.get(sid) and o.state is SvcState.RUNNING:
                    await asyncio.to_thread(service_action, t, "restart", sid, quiesce=False)
                    restarted.append(sid)
            if restarted:
                await self.refresh()
            return {"units_changed": sorted(changed_units), "units_removed": rep.removed, "restarted": restarted,
                    "services": len(cat.presets), "modes": len(cat.modes)}
