"""A mode switch end to end: lock, observe, plan, execute, record history; rollback on request."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import SwitchFailed
from .execute import Event, Executor, SwitchReport
from .lock import host_lock
from .observe import Observed, observe
from .paths import controller_dir
from .plan import Plan, Policy, plan_switch
from .state import History
from .target import Target


def policy_for(target: Target, *, reserve_mb: int | None = None) -> Policy:
    s = target.spec
    return Policy(
        reserve_mb=s.reserve_mb if reserve_mb is None else reserve_mb,
        keep_warm=s.keep_warm,
        preflight_factor=s.preflight_factor,
        preflight_margin_mb=s.preflight_margin_mb,
        quiesce_s=s.quiesce_s,
        quiesce_threshold_mb=s.quiesce_threshold_mb,
        release_tolerance_mb=s.release_tolerance_mb,
    )


@dataclass
class SwitchOutcome:
    plan: Plan
    report: SwitchReport | None  # None for a dry run
    observed: Observed
    rollback: SwitchReport | None = None


def make_plan(target: Target, mode_id: str, policy: Policy | None = None) -> tuple[Plan, Observed]:
    mode = target.catalog.mode(mode_id)  # unknown mode: clear error, nothing touched
    target.ensure_sim()
    seen = observe(target)
    if seen.gpu is None:
        from .errors import GpuProbeError

        raise GpuProbeError(f"cannot plan without the GPU: {seen.gpu_error}")
    return plan_switch(target.catalog, seen, mode, policy or policy_for(target)), seen


def switch(target: Target, mode_id: str, *, dry_run: bool = False, wait_lock: bool = True, quiesce: bool = True,
           rollback: bool = False, on_event: Event | None = None, on_wait: object = None,
           on_plan: object = None) -> SwitchOutcome:
    """``on_plan(plan)`` is called with the lock held, before anything changes (the router daemon
    marks the services that will leave and drains their requests there)."""
    policy = policy_for(target)
    if dry_run:
        plan, seen = make_plan(target, mode_id, policy)
        return SwitchOutcome(plan, None, seen)
    target.catalog.mode(mode_id)
    with host_lock(target.host, target.state_dir, what=f"mode.switch --name {mode_id}", wait=wait_lock,
                   on_wait=on_wait if callable(on_wait) else None):
        plan, seen = make_plan(target, mode_id, policy)
        if callable(on_plan):
            on_plan(plan)
        started = time.time()
        ex = Executor(target, policy, on_event=on_event, quiesce=quiesce, release_timeout_s=target.spec.release_timeout_s)
        report = ex.run(plan, seen.record)
        _history(target, started, report, plan)
        outcome = SwitchOutcome(plan, report, seen)
        if not report.ok and rollback and plan.previous_mode and plan.previous_mode != mode_id:
            back_plan, _ = make_plan(target, plan.previous_mode, policy)
            back = Executor(target, policy, on_event=on_event, quiesce=quiesce,
                            release_timeout_s=target.spec.release_timeout_s).run(back_plan, seen.record)
            _history(target, time.time(), back, back_plan)
            outcome.rollback = back
    if not report.ok:
        lines = list(report.state_lines)
        if outcome.rollback is not None:
            rb = outcome.rollback
            lines.append(f"rollback to {plan.previous_mode}: " + ("done" if rb.ok else f"FAILED: {rb.error}"))
            lines += ["after rollback:"] + ["  " + ln for ln in rb.state_lines if not ln.startswith("now")] if not rb.ok else []
        err = SwitchFailed(f"switch to {mode_id} on {target.spec.name} {report.error}", lines, report.as_dict())
        if report.error.startswith("interrupted"):
            err.exit_code = 130  # Ctrl-C: the shell's convention, after the state report
        raise err
    return outcome


def _history(target: Target, started: float, report: SwitchReport, plan: Plan) -> None:
    try:
        h = History(f"{controller_dir()}/history.sqlite")
        h.add_switch(target.spec.name, started, report.duration_s, plan.previous_mode, plan.mode, report.ok,
                     [r.as_dict() for r in report.results], report.error)
        h.close()
    except Exception:  # history is advisory; never fail a switch over it  # noqa: BLE001
        pass
