"""The one run path: lock -> observe -> plan -> execute -> record, for every operation.

The CLI's ``mode.switch`` and ``service.*``, the MCP tools, bootstrap and the router daemon all
call ``run`` (or ``prepare`` for a dry run, which is the same observe and plan without the lock):
what ``--dry-run`` prints is exactly what the real run executes.

Operations: ``SwitchTo(mode)``, ``ServiceOp(action, service)`` and ``Refresh()`` (re-install
changed units and restart what runs them). After a failed or interrupted run the target's mode
record says so ("switch to X failed at step N: ...; now running: ...") until a run succeeds;
``status``, ``mode.status`` and the daemon's ``/health`` show it instead of the last good mode.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from .catalog.model import Catalog, Preset
from .daemon.announce import DaemonLink
from .drain import drained
from .errors import GpuProbeError, PlanRefused, SwitchFailed
from .execute import Event, Executor, SwitchReport
from .learn import learn_from_run, measured_catalog, measured_lines
from .lock import host_lock
from .observe import observe
from .observed import Observed, RenderedUnit
from .plan import LEAVING, Plan, Policy, ServiceOp, plan_refresh, plan_service, plan_switch
from .plan.order import with_dependencies
from .state import read_mode, write_mode
from .target import Target


@dataclass(frozen=True)
class SwitchTo:
    mode: str

    def describe(self) -> str:
        return f"switch to {self.mode}"


@dataclass(frozen=True)
class Refresh:
    """Install every unit that differs from the catalog; restart running services it changed."""

    def describe(self) -> str:
        return "reload the catalog"


Operation = SwitchTo | ServiceOp | Refresh


def policy_for(target: Target, *, reserve_mb: int | None = None) -> Policy:
    return Policy.for_host(target.spec, reserve_mb=reserve_mb)


@dataclass
class Outcome:
    plan: Plan
    report: SwitchReport | None  # None for a dry run
    observed: Observed
    rollback: SwitchReport | None = None


def _units_for(target: Target, op: Operation) -> list[str]:
    """The presets whose units the plan may install or find stale (rendered before planning)."""
    cat = target.catalog
    if isinstance(op, SwitchTo):
        return list(cat.mode(op.mode).service_ids)
    if isinstance(op, ServiceOp):
        return with_dependencies(cat, [op.service])
    return list(cat.presets)


def prepare(target: Target, op: Operation, policy: Policy | None = None) -> tuple[Plan, Observed]:
    """Observe and plan (no lock, nothing changed): the dry run, and the first half of ``run``.

    On a box with several GPUs the placement is decided before the units are rendered: a first plan
    without the rendered units (pure; it fails as the real one would) places every service, the
    units are rendered for those GPUs, and the plan is made with them, keeping that placement. A
    service placed anew gets a unit that differs from the installed one, which the plan installs
    (and restarts it, when it runs)."""
    from .unit_install import render_units

    cat = target.catalog
    _check_names(target, op)
    policy = policy or policy_for(target)
    target.ensure_sim()
    presets = [cat.presets[s] for s in _units_for(target, op)]
    seen = observe(target, unit_files=list(dict.fromkeys(p.unit for p in presets)))
    if seen.gpu is None:
        raise GpuProbeError(f"cannot plan without the GPU: {seen.gpu_error}")
    # learned figures where the store has them (their digest is of the unit as rendered without a
    # placement, so a figure learned on one GPU still applies when the plan weighs another)
    cat = measured_catalog(target, seen)
    placement: dict[str, tuple[int, ...]] | None = None
    assigned = None
    if seen.multi_gpu:
        from .plan.placement import assignment, static_gpus

        placement = dict(_plan(cat, op, policy, seen, None, _installed_placement(target, seen, presets) or None).placement)
        assigned = {p.id: assignment(seen, placement.get(p.id) or static_gpus(seen, p)) for p in presets}
    rendered = render_units(target, presets, assigned)
    try:
        plan = _plan(cat, op, policy, seen, rendered, placement)
    except PlanRefused as exc:
        exc.lines += measured_lines(cat)  # which figures were measured, and what the presets declare
        raise
    return plan, seen


def _installed_placement(target: Target, seen: Observed, presets: list[Preset]) -> dict[str, tuple[int, ...]]:
    """Services whose process runs but whose GPUs the GPU fact does not show (starting, no memory
    yet, or a driver that reports no processes): the GPUs their installed unit was rendered for,
    found by rendering each candidate and comparing digests, so such a service is never moved by
    the placement of a plan."""
    from itertools import combinations

    from .plan.placement import assignment, held
    from .unit_install import render_units

    out: dict[str, tuple[int, ...]] = {}
    for p in presets:
        o, uf = seen.services.get(p.id), seen.unit_files.get(p.unit)
        if o is None or not o.holds_gpu or held(seen, p.id) or p.gpu_pin or uf is None or not uf.installed:
            continue
        for combo in combinations(seen.gpu_indices, max(1, p.gpus)):
            r = render_units(target, [p], {q.id: assignment(seen, combo) for q in target.catalog.unit_peers(p)}).get(p.unit)
            if r is not None and r.digest == uf.digest:
                out[p.id] = combo
                break
    return out


def _plan(cat: Catalog, op: Operation, policy: Policy, seen: Observed, rendered: dict[str, RenderedUnit] | None,
          placement: dict[str, tuple[int, ...]] | None) -> Plan:
    if isinstance(op, SwitchTo):
        return plan_switch(cat, seen, cat.modes[op.mode], policy, rendered, placement)
    if isinstance(op, ServiceOp):
        return plan_service(cat, seen, op, policy, rendered, now=time.time(), placement=placement)
    return plan_refresh(cat, seen, policy, rendered or {}, placement)


def run(target: Target, op: Operation, *, dry_run: bool = False, wait_lock: bool = True, quiesce: bool = True,
        rollback: bool = False, on_event: Event | None = None, on_wait: Callable[[str], None] | None = None,
        on_plan: Callable[[Plan], None] | None = None) -> Outcome:
    """``on_plan(plan)`` is called with the lock held, before anything changes (the router daemon
    marks the services that will leave and drains their requests there). Without it, a router
    daemon registered on the box (``Observed.daemon``) is asked to do the same over HTTP
    (``drain.py``), so a CLI run never cuts off requests the daemon is serving."""
    policy = policy_for(target)
    if dry_run:
        plan, seen = prepare(target, op, policy)
        return Outcome(plan, None, seen)
    _check_names(target, op)
    with host_lock(target.host, target.state_dir, what=_lock_label(op), wait=wait_lock, on_wait=on_wait):
        plan, seen = prepare(target, op, policy)
        if on_plan is not None:
            on_plan(plan)
            hold: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        else:  # a router daemon serving on the box drains its requests to the leaving services first
            hold = drained(target, _daemon_elsewhere(target, seen), leaving_services(plan), note=on_wait)
        with hold:
            report = _execute(target, op, plan, policy, on_event, quiesce)
            outcome = Outcome(plan, report, seen)
            if (not report.ok and rollback and isinstance(op, SwitchTo) and plan.previous_mode
                    and plan.previous_mode != op.mode):
                back_op = SwitchTo(plan.previous_mode)
                back_plan, _ = prepare(target, back_op, policy)
                outcome.rollback = _execute(target, back_op, back_plan, policy, on_event, quiesce)
    if not report.ok:
        raise _failure(target, op, plan, outcome)
    return outcome


def _check_names(target: Target, op: Operation) -> None:
    """Unknown mode or service: a clear error before anything is touched."""
    if isinstance(op, SwitchTo):
        target.catalog.mode(op.mode)
    elif isinstance(op, ServiceOp):
        target.catalog.preset(op.service)


def _execute(target: Target, op: Operation, plan: Plan, policy: Policy, on_event: Event | None,
             quiesce: bool) -> SwitchReport:
    """Walk the plan; a failure goes into the target's record; the run goes into the history."""
    from .history import record_run

    started = time.time()
    report = Executor(target, policy, on_event=on_event, quiesce=quiesce,
                      release_timeout_s=target.spec.release_timeout_s).run(plan)
    if not report.ok:
        _record_failure(target, op, report)
    learn_from_run(target, report)
    if plan.steps or not report.ok:  # a run that had nothing to do changed nothing: not history
        record_run(target, op, started, report)
    return report


def leaving_services(plan: Plan) -> list[str]:
    """The services the plan sleeps, unloads or stops (in plan order, once each)."""
    return list(dict.fromkeys(s.service for s in plan.steps if isinstance(s, LEAVING)))


def _daemon_elsewhere(target: Target, seen: Observed) -> DaemonLink | None:
    """The daemon registered on the box, unless it is this very process (it drains its own runs
    through ``on_plan``)."""
    link = seen.daemon
    if link is not None and target.host.is_this_machine and link.pid == os.getpid():
        return None
    return link


def _lock_label(op: Operation) -> str:
    if isinstance(op, SwitchTo):
        return f"mode.switch --name {op.mode}"
    return op.describe()


def _failure(target: Target, op: Operation, plan: Plan, outcome: Outcome) -> SwitchFailed:
    report = outcome.report
    assert report is not None
    lines = list(report.state_lines)
    if outcome.rollback is not None:
        rb = outcome.rollback
        lines.append(f"rollback to {plan.previous_mode}: " + ("done" if rb.ok else f"FAILED: {rb.error}"))
        if not rb.ok:
            lines += ["after rollback:"] + ["  " + ln for ln in rb.state_lines if not ln.startswith("now")]
    err = SwitchFailed(f"{op.describe()} on {target.spec.name} {report.error}", lines, report.as_dict())
    if report.error.startswith("interrupted"):
        err.exit_code = 130  # Ctrl-C: the shell's convention, after the state report
    return err


def _record_failure(target: Target, op: Operation, report: SwitchReport) -> None:
    """Make the target's record say the run failed, where, and what runs now."""
    try:
        rec = read_mode(target.host, target.state_dir)
        failure = {"operation": op.describe(), "step": report.failed_step.describe() if report.failed_step else "",
                   "step_index": report.failed_index, "error": report.error.partition("': ")[2] or report.error,
                   "at": time.time(), "state": list(report.now)}
        write_mode(target.host, target.state_dir, replace(rec, failure=failure))
    except Exception:  # noqa: BLE001 - the host may be gone; the error report still says it all
        pass
