"""Single-service operations (start/stop/restart/sleep/wake): the one run path with a
``ServiceOp``, planned by ``plan.service.plan_service`` with the same checks as a switch."""

from __future__ import annotations

from collections.abc import Callable

from .execute import Event
from .pipeline import Outcome, run
from .plan import Plan, RouterLoad, RouterUnload, ServiceOp, Sleep, Start, Wake
from .target import Target


def service_action(t: Target, action: str, service_id: str, *, level: int | None = None, quiesce: bool = True,
                   wait_lock: bool = True, dry_run: bool = False, on_event: Event | None = None,
                   on_plan: Callable[[Plan], None] | None = None) -> str:
    """Run one service operation; returns one line saying what happened."""
    out = run(t, ServiceOp(action, service_id, level, quiesce), dry_run=dry_run, wait_lock=wait_lock,
              on_event=on_event, on_plan=on_plan)
    return outcome_line(out, action, service_id)


def outcome_line(out: Outcome, action: str, sid: str) -> str:
    plan = out.plan
    if plan.nothing_to_do:
        return plan.nothing_to_do
    if out.report is None:
        return f"would run {len(plan.steps)} steps"
    own = [s for s in plan.steps if getattr(s, "service", "") == sid]
    if action == "start":
        return f"{sid} woken" if any(isinstance(s, (Wake, RouterLoad)) for s in own) and not any(
            isinstance(s, Start) for s in own) else f"{sid} started"
    if action == "sleep":
        sl = next((s for s in own if isinstance(s, Sleep)), None)
        if sl is not None:
            return f"{sid} asleep (L{sl.level})"
        return f"{sid} unloaded from its router" if any(isinstance(s, RouterUnload) for s in own) else f"{sid} asleep"
    return {"stop": f"{sid} stopped", "restart": f"{sid} restarted", "wake": f"{sid} awake"}[action]
