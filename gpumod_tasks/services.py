"""Single-service operations (start/stop/sleep/wake), run through the same executor and lock as a
switch, as one-step plans."""

from __future__ import annotations

import time

from .errors import PlanRefused
from .execute import Executor, SwitchReport, raise_if_failed
from .lock import host_lock
from .observe import SvcState, observe
from .plan import Plan, Sleep, Start, Step, Stop, Wake
from .switch import policy_for
from .target import Target


def _one_step(t: Target, step: Step, seen_mode: str | None) -> SwitchReport:
    plan = Plan(mode=seen_mode or "", steps=(step,), keep=(), projected_mb=0, budget_mb=0, gpu_total_mb=0, previous_mode=seen_mode)
    ex = Executor(t, policy_for(t), release_timeout_s=t.spec.release_timeout_s)
    report = ex.run(plan, None)  # type: ignore[arg-type]
    from .history import record_service

    record_service(t, step, report)
    raise_if_failed(report)
    return report


def service_action(t: Target, action: str, service_id: str, *, level: int | None = None, quiesce: bool = True,
                   wait_lock: bool = True) -> str:
    p = t.catalog.preset(service_id)
    t.ensure_sim()
    with host_lock(t.host, t.state_dir, what=f"service.{action} {service_id}", wait=wait_lock):
        seen = observe(t, [service_id], with_gpu=False)
        o = seen.services[service_id]
        rec = seen.record
        if action == "start":
            until = float(rec.last_switch.get("quiesce_until", 0) or 0)
            if quiesce and until > time.time():
                raise PlanRefused(f"start of {service_id} refused: quiescing after a heavy stop, "
                                  f"{until - time.time():.1f}s remain (wait, or pass --no-quiesce)")
            if o.state is SvcState.RUNNING:
                return f"{service_id} is already running"
            if o.state is SvcState.SLEEPING:
                _one_step(t, Wake(service_id, o.sleep_level if o.sleep_level is not None else 1), rec.mode)
                return f"{service_id} woken"
            _one_step(t, Start(service_id, "service.start", policy_for(t).ram_needed_mb(p)), rec.mode)
            return f"{service_id} started"
        if action == "restart":
            # a fresh process (a sleeping one too): stop, then start with the usual preflight and gate
            if o.state is not SvcState.STOPPED:
                _one_step(t, Stop(service_id, "service.restart", o.vram_mb), rec.mode)
            _one_step(t, Start(service_id, "service.restart", policy_for(t).ram_needed_mb(p)), rec.mode)
            _remember_level(t, service_id, None)
            return f"{service_id} restarted"
        if action == "stop":
            if o.state in (SvcState.STOPPED,):
                return f"{service_id} is already stopped"
            _one_step(t, Stop(service_id, "service.stop", o.vram_mb), rec.mode)
            return f"{service_id} stopped"
        if action == "sleep":
            if not p.can_sleep:
                raise PlanRefused(f"{service_id} cannot sleep (sleep_mode: {p.sleep_mode.value}); use service.stop")
            if o.state is SvcState.SLEEPING:
                return f"{service_id} is already asleep"
            if o.state is not SvcState.RUNNING:
                raise PlanRefused(f"{service_id} is {o.state.value}; only a running service can be put to sleep")
            lvl = level if level is not None else (0 if p.sleep_mode.value == "router" else p.sleep_mode.level)
            _one_step(t, Sleep(service_id, lvl, "service.sleep"), rec.mode)
            _remember_level(t, service_id, lvl)
            return f"{service_id} asleep (L{lvl})" if lvl else f"{service_id} unloaded from its router"
        if action == "wake":
            if o.state is SvcState.RUNNING:
                return f"{service_id} is already awake"
            if o.state is not SvcState.SLEEPING:
                raise PlanRefused(f"{service_id} is {o.state.value}, not asleep; use service.start")
            _one_step(t, Wake(service_id, o.sleep_level if o.sleep_level is not None else 1), rec.mode)
            _remember_level(t, service_id, None)
            return f"{service_id} awake"
    raise ValueError(action)


def _remember_level(t: Target, service_id: str, level: int | None) -> None:
    from .state import ModeRecord, read_mode, write_mode

    rec = read_mode(t.host, t.state_dir)
    levels = dict(rec.sleep_levels)
    if level is None:
        levels.pop(service_id, None)
    else:
        levels[service_id] = level
    write_mode(t.host, t.state_dir, ModeRecord(rec.mode, rec.since, levels, rec.last_switch))
