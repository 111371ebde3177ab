"""The model manager behind the router daemon: which service serves a request's ``model``, making it
ready with the smallest change, queues while it gets ready, draining before a sleep, idle sleep,
health watching and periodic reconciliation.  It is a thin layer over the switch engine (the same
plan/execute code and the same host lock), run from asyncio with the blocking work in threads.

Decisions:
- Ready means the service is running and awake and no switch in progress is about to take it away.
- The smallest change: a service of the current mode is woken/started alone (``service.start``);
  otherwise the daemon switches to the mode containing it that fits and is quickest to reach
  (``decide.choose_mode``: every candidate planned from one observation).  That observation is
  the daemon's last one while it is fresh (made within the reconcile interval, and the host's mode
  record unchanged since, which every run on the box rewrites); the run that makes the change
  observes again under the host lock and plans from that.
- Requests waiting for models are served grouped by model, oldest model first: A B A B arriving
  during a switch become one change for A (both A requests), then one for B.
- A service about to be slept or stopped is drained first: new requests to it wait, requests in
  flight get up to ``drain_s`` to finish.
- The concurrency limit holds for every request in flight: one arriving at the limit gets 429 at
  once, one released from the queue when its model became ready waits for a free slot.
- The background loops (worker, reconcile, idle) never end on an error: they log it (once while it
  repeats) and carry on, since a dead loop would leave a killed service unnoticed for good.
- Idle time counts from a service's last request or from when it was seen waking or starting,
  whichever is later.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..catalog.model import Catalog
from ..engines import upstream_name
from ..errors import CatalogError, GpumodError
from ..observe import observe
from ..observed import Observed, SvcState
from ..plan import LEAVING, InstallUnit, Plan
from ..state import read_mode
from .decide import NoModeFits, choose_mode, idle_candidates, service_state

if TYPE_CHECKING:
    from ..execute import Event
    from ..target import Target
    from .metrics import Metrics

log = logging.getLogger("gpumod.router")

NAME_SHOWN = 80  # characters of a client-given name echoed back in an error


def shown(name: Any) -> str:
    """A client-given name for an error message: repr'd, and cut short (a megabyte of name is not echoed)."""
    text = repr(name)
    return text if len(text) <= NAME_SHOWN else f"{text[:NAME_SHOWN]}... ({len(text)} characters)"


class RouteError(Exception):
    """A request the daemon answers itself: status code, message, optional Retry-After, and the
    problems behind it (a catalog's, say), one a line."""

    def __init__(self, status: int, message: str, retry_after: int | None = None, problems: list[str] | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.problems = problems or []


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
    def __init__(self, open_target: Callable[[], AbstractContextManager[Target]], load_catalog: Callable[[], Catalog],
                 opts: Options | None = None, metrics: Metrics | None = None):
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
        self.draining = 0  # drains under way (a switch's own, and those asked for over POST /drain)
        self.held: dict[str, float] = {}  # service -> when its hold expires: another run on the box is taking it away
        self.tasks: list[asyncio.Task[Any]] = []
        self._settling: set[asyncio.Task[None]] = set()  # observations right after a run (``_settle_later``)
        self.slot_waiters: collections.defaultdict[str, collections.deque[asyncio.Future[None]]] = \
            collections.defaultdict(collections.deque)
        self.observed_at = 0.0  # time.monotonic() of the last observation
        self.loop_errors: dict[str, str] = {}  # background loop -> its last error (logged once)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._target_cm: AbstractContextManager[Target] | None = None
        self._target: Target | None = None
        self._target_lock = threading.Lock()

    # -- the host ---------------------------------------------------------------------------
    def target(self) -> Target:
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
        before, self.seen = self.seen, seen
        self.observed_at = time.monotonic()
        self.mode = seen.record.mode
        self._start_idle_clocks(before, seen)
        if self.metrics:
            self.metrics.observed(self, seen)
        return seen

    def _start_idle_clocks(self, before: Observed | None, seen: Observed) -> None:
        """A service seen running that was not before (woken or started, by a switch, a request or
        the CLI) has its idle clock start now: idle time counts from its wake, not from a request
        it answered before it last slept (which would sleep it again at once)."""
        now = time.monotonic()
        for sid, o in seen.services.items():
            was = before.services.get(sid) if before else None
            if o.state is SvcState.RUNNING and (was is None or was.state is not SvcState.RUNNING):
                self.last_request[sid] = now

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.refresh()  # adopt what runs: no restarts, no reloads
        self.tasks = [asyncio.create_task(self._worker()), asyncio.create_task(self._reconcile_loop()),
                      asyncio.create_task(self._idle_loop())]

    async def stop(self) -> None:
        for t in [*self.tasks, *self._settling]:
            t.cancel()
        for t in [*self.tasks, *self._settling]:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await asyncio.to_thread(self.close_target)

    # -- state ------------------------------------------------------------------------------
    def state_of(self, sid: str) -> str:
        """active | sleeping | stopped | switching | error (homeGPT's vocabulary)."""
        return service_state(self.seen, sid, errors=self.errors, leaving=self.leaving | set(self.held), pending=set(self.pending),
                             switching=self.switching)

    def ready(self, sid: str) -> bool:
        o = self.seen.services.get(sid) if self.seen else None
        return (o is not None and o.state is SvcState.RUNNING and sid not in self.leaving and sid not in self.held
                and sid not in self.errors)

    def resolve(self, model: Any) -> str:
        if not isinstance(model, str) or not model:
            raise RouteError(400, "the request has no 'model'")
        sid = self.models.get(model)
        if sid is None:
            raise RouteError(404, f"model {shown(model)} is not served here; known: {', '.join(sorted(self.models))}")
        return sid

    # -- requests ---------------------------------------------------------------------------
    async def acquire(self, sid: str) -> None:
        """Wait until ``sid`` is ready (making it so), then count the request in flight.

        A request arriving while ``sid`` is at its concurrency limit gets 429 at once; one that
        waited in the queue for ``sid`` to become ready then waits for a free slot as well (the
        limit holds for every request in flight, queued or not), within the same timeout."""
        if self.in_flight[sid] >= self.opts.concurrency:
            raise RouteError(429, f"{sid}: {self.in_flight[sid]} requests in flight (limit {self.opts.concurrency})", 1)
        deadline = time.monotonic() + self.opts.request_timeout_s
        while True:
            await self._wait_ready(sid, deadline)
            if self.in_flight[sid] < self.opts.concurrency:
                break
            await self._wait_slot(sid, deadline)
        self.in_flight[sid] += 1
        self.last_request[sid] = time.monotonic()

    async def _wait_ready(self, sid: str, deadline: float) -> None:
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

    async def _wait_slot(self, sid: str, deadline: float) -> None:
        """Wait until a request in flight for ``sid`` ends (``release`` wakes the oldest waiter)."""
        assert self.loop is not None
        fut: asyncio.Future[None] = self.loop.create_future()
        self.slot_waiters[sid].append(fut)
        self.waiting[sid] += 1
        try:
            await asyncio.wait_for(fut, max(0.01, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise RouteError(503, f"{sid}: no free slot within {self.opts.request_timeout_s:g}s "
                                  f"({self.in_flight[sid]} in flight, limit {self.opts.concurrency})", 5) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._wake_slot(sid)  # woken, but the client left: the slot goes to the next waiter
            raise
        finally:
            self.waiting[sid] -= 1
            if not fut.done():
                fut.cancel()
            if fut in self.slot_waiters[sid]:
                self.slot_waiters[sid].remove(fut)

    def _wake_slot(self, sid: str) -> None:
        q = self.slot_waiters.get(sid)
        while q:
            fut = q.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def release(self, sid: str) -> None:
        self.in_flight[sid] -= 1
        self.last_request[sid] = time.monotonic()
        self._wake_slot(sid)
        if self.draining:  # only a switch waiting to sleep/stop a service listens
            async with self.drained:
                self.drained.notify_all()

    async def lost(self, sid: str, since: float) -> None:
        """A request found ``sid``'s port closed (killed, crashed) at ``since``: observe the host now
        rather than at the next reconcile, so the request (and the ones after it) wait for the
        restart instead of failing."""
        if self.observed_at > since:
            return
        async with self.switch_lock:
            if self.observed_at <= since:  # another request's loss may have re-observed meanwhile
                log.info("%s: its port refused a connection; looking again", sid)
                await self.refresh()

    # -- making a model ready ---------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            await self.kick.wait()
            self.kick.clear()
            while self.pending:
                sid, w = next(iter(self.pending.items()))
                done: Any = None
                try:
                    done = await self.ensure(sid)
                except (GpumodError, RouteError) as exc:
                    w.error = f"{sid} could not be made ready: {exc}"
                    log.error("%s", w.error)
                except Exception as exc:  # noqa: BLE001 - a bug must not kill the worker
                    w.error = f"{sid} could not be made ready: {type(exc).__name__}: {exc}"
                    log.error("%s", w.error)
                    log.debug("traceback", exc_info=True)
                self.pending.pop(sid, None)
                w.event.set()
                if isinstance(done, dict):
                    log_done(done)

    async def ensure(self, sid: str) -> dict[str, Any]:
        """The smallest change that makes ``sid`` ready; returns what was done."""
        async with self.switch_lock:
            if self.held:
                await asyncio.to_thread(self._expire_holds)
            if not await asyncio.to_thread(self._seen_is_current):
                await self.refresh()
            if self.ready(sid):
                return {"service": sid, "action": "none", "duration_s": 0.0}
            self.errors.pop(sid, None)
            mode = self.mode
            if mode in self.cat.modes and sid in self.cat.modes[mode].service_ids:
                return await self._service_start(sid, settle_later=True)
            target_mode = await asyncio.to_thread(self._best_mode_for, sid, self.seen)
            return await self._switch(target_mode, sid, settle_later=True)

    def _made_ready(self, sid: str, mode: str | None) -> None:
        """A run that made ``sid`` ready succeeded (its health gate saw it healthy and awake): the
        observation says so until the full one ``_settle`` makes right after.  The services that
        run took away stay in ``leaving`` until then, so none of them is routed to meanwhile."""
        seen = self.seen
        o = seen.services.get(sid) if seen else None
        if seen is None or o is None:
            return
        self.seen = replace(seen, services={**seen.services, sid: replace(o, state=SvcState.RUNNING)})
        if mode is not None:
            self.mode = mode

    def _settle_later(self, leaving: set[str]) -> None:
        """Observe the whole host once the request that waited for a run has been let go (under the
        switch lock, which the next run waits for); ``leaving`` is cleared after it."""
        self.leaving = self.leaving | leaving

        async def settle() -> None:
            try:
                async with self.switch_lock:
                    await self.refresh()
            except Exception as exc:  # noqa: BLE001 - the next reconcile observes again
                log.warning("observing after a run failed: %s", exc)
            finally:
                self.leaving = set()
                self._settling.discard(task)

        task = asyncio.create_task(settle())
        self._settling.add(task)

    def _seen_is_current(self) -> bool:
        """The last observation still stands for choosing what to do: it is no older than the
        reconcile interval and the host's mode record is what it saw (every run on the box, the
        CLI's too, rewrites the record).  What is chosen from it is then done by a run that
        observes again under the host lock and plans from that, and whose waits check the GPU."""
        seen = self.seen
        if seen is None or time.monotonic() - self.observed_at > self.opts.reconcile_s:
            return False
        try:
            t = self.target()
            return read_mode(t.host, t.state_dir) == seen.record
        except GpumodError:
            return False

    def _best_mode_for(self, sid: str, seen: Observed | None = None) -> str:
        """Every candidate mode planned (pure) from one observation, the quickest wins.

        ``ensure`` passes the one it has just made with the switch lock held, so nothing of the
        daemon's has changed since; a change behind its back in those milliseconds only makes
        the choice less than the quickest: the switch itself observes again under the host lock
        and plans from that, refusing what does not fit."""
        from ..learn import measured_catalog
        from ..pipeline import policy_for

        t = self.target()
        if seen is None:
            seen = self._observe()
        try:
            return choose_mode(measured_catalog(t, seen), seen, sid, policy_for(t)).mode
        except NoModeFits as exc:
            raise RouteError(409, str(exc)) from None

    async def _service_start(self, sid: str, settle_later: bool = False) -> dict[str, Any]:
        """``settle_later``: on success, let the request go as soon as the run is done and observe
        the host right after (``_made_ready``, ``_settle_later``)."""
        from ..services import service_action

        t0 = time.perf_counter()
        self.switching = True
        ok = False
        try:
            msg = await asyncio.to_thread(service_action, self.target(), "start", sid, quiesce=False)
            ok = True
        finally:
            self.switching = False
            if ok and settle_later:
                self._made_ready(sid, None)
                self._settle_later(set())
            else:
                await self.refresh()
        took = time.perf_counter() - t0
        if self.metrics:
            self.metrics.wake(sid, took)
        return {"service": sid, "action": msg, "duration_s": round(took, 3), "mode": self.mode}

    async def _switch(self, mode: str, for_sid: str | None = None, on_event: Event | None = None,
                      settle_later: bool = False) -> dict[str, Any]:
        """``settle_later`` (with ``for_sid``): as for ``_service_start``."""
        from ..switch import switch

        assert self.loop is not None
        loop = self.loop

        def on_plan(plan: Plan) -> None:
            leaving = {s.service for s in plan.steps if isinstance(s, LEAVING)}
            self.leaving = leaving
            # drain (in the switch's thread, with the host lock held): wait for in-flight requests
            asyncio.run_coroutine_threadsafe(self._drain(leaving), loop).result()

        t0 = time.perf_counter()
        self.switching = True
        ok = False
        try:
            out = await asyncio.to_thread(switch, self.target(), mode, on_plan=on_plan, quiesce=False, on_event=on_event)
            ok = True
        finally:
            self.switching = False
            leaving, self.leaving = self.leaving, set()
            if ok and settle_later and for_sid is not None:
                self._made_ready(for_sid, mode)
                self._settle_later(leaving)
            else:
                await self.refresh()
        took = time.perf_counter() - t0
        if self.metrics:
            self.metrics.switch(mode, took)
        rep = out.report.as_dict() if out.report else {}
        return {"service": for_sid, "action": f"switched to {mode}", "mode": mode, "duration_s": round(took, 3),
                "summary": rep.get("summary", {})}

    async def _drain(self, leaving: set[str]) -> None:
        deadline = time.monotonic() + self.opts.drain_s
        self.draining += 1
        try:
            await self._drain_wait(leaving, deadline)
        finally:
            self.draining -= 1

    async def hold(self, services: list[str], hold_s: float) -> dict[str, Any]:
        """``POST /drain``: another run on the box (a CLI switch) is about to sleep or stop
        ``services``. New requests to them wait (as for a switch of the daemon's own) until
        ``unhold`` or ``hold_s``, or until the host lock is free again; the answer comes when
        their requests in flight have finished, or after ``drain_s``."""
        known = [s for s in services if s in self.cat.presets]
        until = time.monotonic() + hold_s
        for sid in known:
            self.held[sid] = max(until, self.held.get(sid, 0.0))
        had = {s: self.in_flight[s] for s in known if self.in_flight[s]}
        if had:
            log.info("draining %s for another run on the box", ", ".join(f"{s} ({n} in flight)" for s, n in had.items()))
        t0 = time.monotonic()
        await self._drain(set(known))
        return {"services": known, "had": had, "in_flight": {s: self.in_flight[s] for s in known},
                "waited_s": round(time.monotonic() - t0, 3)}

    async def unhold(self, services: list[str]) -> None:
        """``POST /drain/end``: the run is over; requests that queued meanwhile are served (their
        services made ready again if they want them)."""
        for sid in services:
            self.held.pop(sid, None)
        self.kick.set()  # the worker makes them ready for what queued meanwhile

    def _expire_holds(self) -> None:
        """Drop holds past their time, and every hold once the host lock is free (the run that
        asked died without ``POST /drain/end``)."""
        if not self.held:
            return
        from ..lock import held_lock_text

        now = time.monotonic()
        t = self.target()
        free = held_lock_text(t.host, t.state_dir) is None
        for sid, until in list(self.held.items()):
            if free or until <= now:
                log.info("%s: hold for another run released (%s)", sid, "the host lock is free" if free else "expired")
                self.held.pop(sid, None)

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

    async def switch_mode(self, mode: str, on_event: Event | None = None) -> dict[str, Any]:
        """``on_event(phase, step, detail)``: the engine's step events, from the switch's thread."""
        if mode not in self.cat.modes:
            raise RouteError(404, f"unknown mode {shown(mode)}; known: {', '.join(sorted(self.cat.modes))}")
        async with self.switch_lock:
            return await self._switch(mode, on_event=on_event)

    # -- background loops -------------------------------------------------------------------
    # Each catches everything but its own cancellation, logs it and carries on: a loop that died
    # would leave a killed service answering 502 until the daemon is restarted.
    def _loop_failed(self, loop: str, exc: BaseException) -> None:
        """Log a background loop's error once (and again only when it changes); the traceback at debug."""
        text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, GpumodError) else str(exc)
        if self.loop_errors.get(loop) != text:
            log.error("%s: %s (carrying on)", loop, text)
        log.debug("%s: traceback", loop, exc_info=exc)
        self.loop_errors[loop] = text

    def _loop_ok(self, loop: str) -> None:
        if self.loop_errors.pop(loop, None) is not None:
            log.info("%s: working again", loop)

    async def _reconcile_loop(self) -> None:
        await self._every("reconcile", lambda: self.opts.reconcile_s, self._reconcile_once,
                          skip=self.switch_lock.locked)

    async def _every(self, name: str, seconds: Callable[[], float], once: Callable[[], Awaitable[None]],
                     skip: Callable[[], bool] = lambda: False) -> None:
        """Run ``once`` every ``seconds()`` (not while ``skip()``); an error is logged (once while it
        repeats) and the loop goes on, so a bad observation never ends the daemon's watch."""
        while True:
            await asyncio.sleep(seconds())
            if skip():
                continue
            try:
                await once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - see above
                self._loop_failed(name, exc)
            else:
                self._loop_ok(name)

    async def _reconcile_once(self) -> None:
        if self.held:
            await asyncio.to_thread(self._expire_holds)
        async with self.switch_lock:
            seen = await self.refresh()
        await self._watch_health(seen)
        # put to sleep or stopped behind the daemon's back while it had requests in flight: a
        # sleeping vLLM holds such requests without an answer, so wake it and they complete
        for sid, n in list(self.in_flight.items()):
            o = seen.services.get(sid)
            if n > 0 and o is not None and o.state in (SvcState.SLEEPING, SvcState.STOPPED) and sid not in self.pending:
                log.info("%s: %s behind the daemon's back with %d requests in flight; waking it", sid, o.state.value, n)
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
                if sid not in self.errors:
                    log.error("%s: unhealthy for %d checks while its process lives: %s", sid, self.unhealthy_count[sid], detail)
                self.errors[sid] = f"unhealthy for {self.unhealthy_count[sid]} checks while its process lives: {detail}"
                if self.opts.restart_unhealthy:
                    async with self.switch_lock:
                        try:
                            log.info("%s: restarting (hung)", sid)
                            await asyncio.to_thread(service_action, self.target(), "restart", sid, quiesce=False)
                            self.errors.pop(sid, None)
                            self.unhealthy_count.pop(sid, None)
                        except GpumodError as exc:
                            self.errors[sid] = f"restart after hanging failed: {exc}"
                            log.error("%s: %s", sid, self.errors[sid])
                        await self.refresh()

    async def _idle_loop(self) -> None:
        await self._every("idle", lambda: self.opts.idle_check_s, self._idle_once)

    async def _idle_once(self) -> None:
        from ..services import service_action

        mode = self.cat.modes.get(self.mode or "")
        if mode is None or self.switch_lock.locked():
            return
        now = time.monotonic()
        for ms in mode.services:  # a service never asked for since the daemon started counts from now
            if ms.sleep_on_idle:
                self.last_request.setdefault(ms.id, now)
        due = idle_candidates(self.cat, mode, self.seen, last_request=self.last_request, in_flight=self.in_flight,
                              pending=set(self.pending), errors=self.errors, now=now)
        for sid in due:
            if not self.ready(sid):
                continue
            idle = now - self.last_request[sid]
            async with self.switch_lock:
                try:
                    await asyncio.to_thread(service_action, self.target(), "sleep", sid)
                    log.info("%s: idle sleep after %.0f s without requests", sid, idle)
                except GpumodError as exc:
                    self.errors[sid] = f"idle sleep failed: {exc}"
                    log.error("%s: %s", sid, self.errors[sid])
                await self.refresh()

    # -- catalog ----------------------------------------------------------------------------
    def _use_catalog(self, cat: Catalog) -> None:
        """The catalog, and what routing derives from it: request names -> service, service -> its own name."""
        self.cat, self.models = cat, model_map(cat)
        self.upstream_names = {sid: upstream_name(p) for sid, p in cat.presets.items()}

    async def reload(self) -> dict[str, Any]:
        """Re-read the catalog; install units that changed and restart only the running services
        whose unit changed, through the one run path (a ``Refresh`` plan)."""
        from ..pipeline import Refresh, run
        from ..unit_install import install_all

        async with self.switch_lock:
            try:
                cat = await asyncio.to_thread(self.load_catalog)
            except CatalogError as exc:
                log.error("reload refused: %s; the catalog in force stays", exc)
                for line in exc.details():
                    log.error("  %s", line)
                raise RouteError(422, f"{exc}; the catalog in force stays", problems=exc.details()) from None
            t = self.target()
            t.catalog = cat
            self._use_catalog(cat)
            out = await asyncio.to_thread(run, t, Refresh())
            rep = await asyncio.to_thread(install_all, t)  # the daemon's own unit, removed presets' units
            await self.refresh()
            installed = sorted({s.unit for s in out.plan.steps if isinstance(s, InstallUnit)} | set(rep.changed))
            restarted = list(out.plan.restarted)
            log.info("reloaded the catalog: %d services, %d modes; units changed: %s; restarted: %s", len(cat.presets),
                     len(cat.modes), ", ".join(installed) or "none", ", ".join(restarted) or "none")
            return {"units_changed": installed, "units_removed": rep.removed, "restarted": restarted,
                    "services": len(cat.presets), "modes": len(cat.modes), "steps": [s.describe() for s in out.plan.steps]}


def log_done(done: dict[str, Any]) -> None:
    """One line for what making a model ready took (nothing when it already was)."""
    if done.get("action") and done.get("action") != "none":
        log.info("%s ready: %s in %.2f s (mode %s)", done.get("service"), done["action"], done.get("duration_s", 0.0),
                 done.get("mode"))


# what the first on-demand swap would otherwise import while its request waits (~20 ms here):
# the pipeline and its waits (tenacity), the history (sqlite3), learning, the service operations,
# this machine's facts, and the IDNA codec a first upstream connection looks up
SWAP_PATH_MODULES = ("gpumod_tasks.pipeline", "gpumod_tasks.execute", "gpumod_tasks.switch", "gpumod_tasks.services",
                     "gpumod_tasks.history", "gpumod_tasks.learn", "gpumod_tasks.unit_install", "gpumod_tasks.lock",
                     "gpumod_tasks.facts.here", "gpumod_tasks.engines.registry", "tenacity", "sqlite3", "encodings.idna")


def import_swap_path() -> None:
    """Import what a swap uses before the daemon serves: a long-running process pays it once, at
    start, not in the first request for a model outside the mode."""
    import importlib

    for name in SWAP_PATH_MODULES:
        importlib.import_module(name)
