"""Execute a plan: walk its steps through the host and re-observe at checkpoints instead of
trusting the plan (VRAM really released? health really green?).

tenacity drives every wait: VRAM-release polling and health gates poll at an interval of 3% of
the time waited so far (2 ms floor, 1 s cap), so a release is seen within about 10% of its lag
while a long load is not hammered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .catalog.model import Preset
from .engines import Health, Probe, probe
from .engines import sleep as driver_sleep
from .engines import wake as driver_wake
from .errors import GpumodError, HostError, SwitchFailed
from .facts.meminfo import parse_meminfo
from .observe import observe
from .observed import describe_state
from .plan import (
    AwaitHealthy,
    DaemonReload,
    InstallUnit,
    Plan,
    Policy,
    Quiesce,
    Record,
    ResetFailed,
    RouterLoad,
    RouterUnload,
    Sleep,
    Start,
    Step,
    Stop,
    WaitRelease,
    Wake,
)
from .service_manager import Systemd
from .state import ModeRecord, read_mode, write_mode
from .target import Target
from .unit_install import write_unit

T = TypeVar("T")

#: how long a leaving service whose sleep failed may take to read as stopped (it died meanwhile)
DEATH_SETTLE_S = 1.0

if TYPE_CHECKING:
    from tenacity import RetryCallState

Event = Callable[[str, Step, str], None]  # (phase: start|done|fail|info, step, detail)


def adaptive_wait(floor: float = 0.002, frac: float = 0.03, cap: float = 1.0) -> Callable[[RetryCallState], float]:
    def wait(rs: RetryCallState) -> float:
        elapsed = rs.seconds_since_start or 0.0
        return min(cap, max(floor, frac * elapsed))

    return wait


@dataclass
class StepResult:
    step: Step
    status: str  # changed | unchanged | failed
    seconds: float
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.step.kind, "step": self.step.describe(), "status": self.status,
                "seconds": round(self.seconds, 3), "detail": self.detail}


@dataclass
class SwitchReport:
    plan: Plan
    results: list[StepResult] = field(default_factory=list)
    ok: bool = True
    duration_s: float = 0.0
    error: str = ""
    state_lines: list[str] = field(default_factory=list)
    failed_step: Step | None = None
    failed_index: int = 0  # 1-based index of the failed step in the plan
    now: list[str] = field(default_factory=list)  # what runs after a failure (describe_state)

    def summary(self) -> dict[str, list[tuple[str, float]]]:
        out: dict[str, list[tuple[str, float]]] = {"Stopped": [], "Slept": [], "Woken": [], "Started": []}
        names = {Stop: "Stopped", RouterUnload: "Slept", Sleep: "Slept", Wake: "Woken", RouterLoad: "Woken",
                 Start: "Started"}
        started = {r.step.service for r in self.results if isinstance(r.step, Start)}
        for r in self.results:
            if isinstance(r.step, RouterLoad) and r.step.service in started:
                continue  # its Start is the entry: a router model loaded right after its router started
            key = names.get(type(r.step))
            if key and r.status == "changed":
                out[key].append((getattr(r.step, "service", ""), r.seconds))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.plan.mode, "previous_mode": self.plan.previous_mode, "ok": self.ok,
            "duration_s": round(self.duration_s, 3), "error": self.error,
            "steps": [r.as_dict() for r in self.results],
            "summary": {k: [{"service": s, "seconds": round(t, 3)} for s, t in v] for k, v in self.summary().items()},
            "kept": list(self.plan.keep), "relaunched": list(self.plan.relaunched), "restarted": list(self.plan.restarted),
            "operation": self.plan.operation, "failed_step": self.failed_index or None,
            "projected_mb": self.plan.projected_mb, "budget_mb": self.plan.budget_mb,
            "notes": list(self.plan.notes), "state": self.state_lines,
            "placement": {sid: list(ix) for sid, ix in self.plan.placement}, "gpus": [g.as_dict() for g in self.plan.gpus],
        }


class StepFailed(GpumodError):
    pass


class Executor:
    """Walks a plan's steps and only acts: every decision is in the plan. It re-observes at the
    checkpoints (VRAM released, health green) and keeps two last guards that the plan already
    passed at plan time: the RAM preflight before a start, and the unit's own ExecStartPre."""

    def __init__(self, target: Target, policy: Policy, *, on_event: Event | None = None, quiesce: bool = True,
                 release_timeout_s: float = 60.0):
        self.t = target
        self.cat = target.catalog
        self.policy = policy
        self.on_event = on_event or (lambda phase, step, detail: None)
        self.quiesce = quiesce
        self.release_timeout_s = release_timeout_s
        self.quiesce_until = 0.0

    # -- the walk ---------------------------------------------------------------------------
    def run(self, plan: Plan) -> SwitchReport:
        report = SwitchReport(plan)
        t0 = time.perf_counter()
        current: Step | None = None
        try:
            for step in plan.steps:
                current = step
                self.on_event("start", step, "")
                s0 = time.perf_counter()
                status, detail = self._do(step, plan, t0)
                res = StepResult(step, status, time.perf_counter() - s0, detail)
                report.results.append(res)
                self.on_event("done", step, f"{res.seconds:.2f}s" + (f" {detail}" if detail else ""))
        except (GpumodError, OSError, KeyboardInterrupt) as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            msg = "interrupted (Ctrl-C)" if interrupted else (str(exc) if isinstance(exc, GpumodError)
                                                              else f"{type(exc).__name__}: {exc}")
            if current is not None:
                report.results.append(StepResult(current, "failed", 0.0, msg))
                self.on_event("fail", current, msg)
            report.ok = False
            report.failed_step = current
            report.failed_index = plan.steps.index(current) + 1 if current is not None else 0
            report.error = f"{'interrupted at' if interrupted else 'failed at'} step '{current.describe() if current else '?'}': {msg}"
            if isinstance(exc, GpumodError):
                report.state_lines.extend(exc.details())
        report.duration_s = time.perf_counter() - t0
        if not report.ok:
            try:
                seen = observe(self.t)
                report.now = describe_state(seen)
                report.state_lines = ["now on the GPU host:"] + ["  " + ln for ln in report.now] + report.state_lines
            except GpumodError as exc:  # pragma: no cover - host gone too
                report.state_lines.append(f"state of the GPU host unknown: cannot observe it ({exc}); the failed step may "
                                          "have been half done. Re-run the same switch once the host is reachable: it plans "
                                          "against what really runs and converges.")
        return report

    def _do(self, step: Step, plan: Plan, t0: float) -> tuple[str, str]:
        if isinstance(step, InstallUnit):
            changed = write_unit(self.t, step.unit, step.body, step.spec)
            return ("changed", "") if changed else ("unchanged", "already as rendered")
        if isinstance(step, DaemonReload):
            self._systemd().daemon_reload()
            return "changed", ""
        if isinstance(step, ResetFailed):
            self._systemd().reset_failed(step.unit)
            return "changed", ""
        if isinstance(step, Stop):
            self.t.manager.stop(step.unit or self.cat.presets[step.service].unit)
            return "changed", ""
        if isinstance(step, (RouterUnload, Sleep)):
            p = self.cat.presets[step.service]
            try:
                driver_sleep(self.t.host, p, step.level if isinstance(step, Sleep) else 0)
            except HostError:
                # a leaving service that died since it was observed: what this step is for (its VRAM
                # given back) holds already; the release wait that follows checks the GPU. Its unit
                # may take a moment to read as stopped (a killed server's runner is still exiting, a
                # zombie not yet reaped): asked again for up to a second before the error stands
                if self._stops_within(p.unit, DEATH_SETTLE_S):
                    return "unchanged", "it had already stopped"
                raise
            return "changed", ""
        if isinstance(step, WaitRelease):
            return self._wait_release(step)
        if isinstance(step, Quiesce):
            if not self.quiesce:
                return "unchanged", "skipped (--no-quiesce)"
            until = time.time() + step.seconds
            self.quiesce_until = until
            if step.wait:
                time.sleep(max(0.0, until - time.time()))
                return "unchanged", f"waited {step.seconds:g}s"
            return "unchanged", "window recorded"
        if isinstance(step, Wake):
            p = self.cat.presets[step.service]
            driver_wake(self.t.host, p, step.level)
            self._gate(p, time.perf_counter())
            return "changed", ""
        if isinstance(step, Start):
            return self._start(step)
        if isinstance(step, RouterLoad):
            p = self.cat.presets[step.service]
            t_load = time.perf_counter()
            driver_wake(self.t.host, p, 0)
            self._gate(p, t_load)
            return "changed", ""
        if isinstance(step, AwaitHealthy):
            p = self.cat.presets[step.service]
            self._gate(p, time.perf_counter())
            return "unchanged", "healthy"
        if isinstance(step, Record):
            return self._record(step, plan, t0)
        raise StepFailed(f"unknown step {step!r}")  # pragma: no cover

    def _systemd(self) -> Systemd:
        m = self.t.manager
        if not isinstance(m, Systemd):  # the planner emits these for systemd only
            raise StepFailed(f"{m.kind} has no daemon-reload / reset-failed")
        return m

    def _record(self, step: Record, plan: Plan, t0: float) -> tuple[str, str]:
        old = read_mode(self.t.host, self.t.state_dir)
        levels = dict(step.sleep_levels)
        if step.mode is None:  # a service operation: the mode stays, its sleep levels follow
            new = ModeRecord(old.mode, old.since, levels, old.last_switch)
        else:
            last = {"from": plan.previous_mode, "to": plan.mode, "at": time.time(),
                    "duration_s": round(time.perf_counter() - t0, 3)}
            if self.quiesce_until:
                last["quiesce_until"] = self.quiesce_until
            new = ModeRecord(step.mode, time.time() if step.mode != old.mode else (old.since or time.time()), levels, last)
        write_mode(self.t.host, self.t.state_dir, new)
        same = (new.mode, new.sleep_levels) == (old.mode, old.sleep_levels) and not old.failure
        return ("unchanged" if same and step.mode is None else "changed"), ""

    def _stops_within(self, unit: str, seconds: float) -> bool:
        """Whether ``unit`` reads as not running now or within ``seconds`` (asked every 20 ms)."""
        from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

        def running() -> bool:
            return self.t.manager.states([unit])[unit].is_running

        try:
            Retrying(stop=stop_after_delay(seconds), wait=wait_fixed(0.02), retry=retry_if_result(bool))(running)
        except RetryError:
            return False
        return True

    # -- checkpoints ------------------------------------------------------------------------
    def _wait_release(self, step: WaitRelease) -> tuple[str, str]:
        if step.per_gpu:
            return self._wait_release_per_gpu(step)
        if self.t.gpu_reader.waits_on_box:  # a remote box: the whole wait is one command there
            return self._wait_release_on_box(step)
        limit = step.expected_used_mb + step.tolerance_mb
        released, last = self._poll_release(self.t.gpu_used_mb, lambda u: u <= limit)
        if not released:
            raise self._not_released(step, last)
        return "unchanged", f"{last[-1]} MB used after {len(last)} polls"

    def _wait_release_per_gpu(self, step: WaitRelease) -> tuple[str, str]:
        """Met when every GPU involved is down to its figure (all GPUs read in each poll)."""
        want = dict(step.per_gpu)

        def held(u: dict[int, int]) -> list[int]:
            return [g for g, mb in want.items() if u.get(g, 0) > mb + step.tolerance_mb]

        released, last = self._poll_release(self.t.gpu_reader.used_per_gpu, lambda u: not held(u))
        if not released:
            u = last[-1] if last else {}
            still = ", ".join(f"GPU{g} uses {u.get(g, '?')} MB > expected {want[g]} MB" for g in (held(u) if u else want))
            if step.releasing:
                raise StepFailed(f"releasing: {', '.join(step.releasing)}: still held after {self.release_timeout_s:g}s "
                                 f"({still} + {step.tolerance_mb} MB); the process may be stuck exiting, check nvidia-smi")
            raise StepFailed(f"VRAM not released: {still} + {step.tolerance_mb} MB after {self.release_timeout_s:g}s "
                             f"(a stopped process may be stuck; check nvidia-smi)")
        u = last[-1]
        return "unchanged", ", ".join(f"GPU{g} {u.get(g, 0)} MB" for g in sorted(want)) + f" used after {len(last)} polls"

    def _poll_release(self, read: Callable[[], T], released: Callable[[T], bool]) -> tuple[bool, list[T]]:
        """The release poll in this process: ``read()`` at the adaptive interval until ``released``
        of what it read, or the release timeout; (met, every figure read)."""
        from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay  # imported by a wait only

        last: list[T] = []

        def once() -> T:
            u = read()
            last.append(u)
            return u

        try:
            Retrying(stop=stop_after_delay(self.release_timeout_s), wait=adaptive_wait(),
                     retry=retry_if_result(lambda u: not released(u)))(once)
        except RetryError:
            return False, last
        return True, last

    def _wait_release_on_box(self, step: WaitRelease) -> tuple[str, str]:
        """``_wait_release`` polled on the box by one command (``GpuReader.wait_used_at_most``):
        the same interval, one round trip instead of one per poll."""
        limit = step.expected_used_mb + step.tolerance_mb
        last: list[int] = []
        if not self.t.gpu_reader.wait_used_at_most(limit, self.release_timeout_s, last):
            raise self._not_released(step, last)
        return "unchanged", f"{last[-1]} MB used after {len(last)} polls"

    def _not_released(self, step: WaitRelease, polls: list[int]) -> StepFailed:
        """A one-GPU release wait that timed out: what the GPU used last, against what was expected."""
        now = polls[-1] if polls else "?"
        if step.releasing:
            return StepFailed(f"releasing: {', '.join(step.releasing)}: still held after {self.release_timeout_s:g}s "
                              f"(GPU uses {now} MB > expected {step.expected_used_mb} MB + "
                              f"{step.tolerance_mb} MB); the process may be stuck exiting, check nvidia-smi")
        return StepFailed(f"VRAM not released: GPU still uses {now} MB > expected "
                          f"{step.expected_used_mb} MB + {step.tolerance_mb} MB after {self.release_timeout_s:g}s "
                          f"(a stopped process may be stuck; check nvidia-smi)")

    def _preflight(self, p: Preset) -> str:
        text = self.t.host.read_file(f"{self.t.spec.procfs.rstrip('/')}/meminfo")
        if not text:
            return "MemAvailable unknown"
        avail = parse_meminfo(text).available_mb
        need = self.policy.ram_needed_mb(p)
        if avail < need:
            raise StepFailed(f"preflight refused {p.id}: MemAvailable {avail} MB < needed {need} MB "
                             f"(model_size_mb {p.model_size_mb} x {self.policy.preflight_factor:g} + "
                             f"{self.policy.preflight_margin_mb} MB); loading it could freeze the host")
        return f"MemAvailable {avail} MB >= {need} MB"

    def _start(self, step: Start) -> tuple[str, str]:
        p = self.cat.presets[step.service]
        t_start = time.perf_counter()
        detail = self._preflight(p)
        self.t.manager.start(step.unit or p.unit)
        if step.router:
            self._wait_router_listening(p, t_start)  # its model is loaded by the RouterLoad step next
        else:
            self._gate(p, t_start)
        return "changed", detail

    def _wait_router_listening(self, p: Preset, t_start: float) -> None:
        from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay  # imported by a wait only

        def up() -> bool:
            pr = probe(self.t.host, p)
            if pr.health is Health.DOWN:
                self._check_alive(p, pr)
            return pr.health is not Health.DOWN

        try:
            Retrying(stop=stop_after_delay(p.startup_timeout), wait=adaptive_wait(), retry=retry_if_result(lambda ok: not ok))(up)
        except RetryError:
            raise self._gate_failure(p, "router did not start listening", t_start) from None

    def _check_alive(self, p: Preset, pr: Probe) -> None:
        u = self.t.manager.states([p.unit])[p.unit]
        if not u.is_running or u.sub == "auto-restart":
            raise self._gate_failure(p, f"unit {p.unit} is {u.active}/{u.sub} (exited while starting); last answer: {pr.detail}", None)

    def _gate(self, p: Preset, t_start: float) -> None:
        """Health gate: poll until healthy and awake (router: model ``loaded``), up to startup_timeout."""
        from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay

        last: list[Probe] = []
        checks = [0]

        def attempt() -> bool:
            pr = probe(self.t.host, p)
            last.append(pr)
            ok = pr.health is Health.OK and not pr.sleeping
            if not ok:
                checks[0] += 1
                if pr.router_status == "failed":
                    raise self._gate_failure(p, f"router reports the model failed to load: {pr.detail}", t_start)
                if pr.health in (Health.DOWN, Health.BAD) and checks[0] % 5 == 1:
                    self._check_alive(p, pr)
            return ok

        try:
            Retrying(stop=stop_after_delay(max(0.1, p.startup_timeout - (time.perf_counter() - t_start))),
                     wait=adaptive_wait(), retry=retry_if_result(lambda ok: not ok))(attempt)
        except RetryError:
            lp = last[-1] if last else None
            ans = f"{lp.health.value}: {lp.detail}" if lp else "none"
            raise self._gate_failure(p, f"not healthy after {p.startup_timeout}s; last health answer: {ans}", t_start) from None

    def _gate_failure(self, p: Preset, why: str, t_start: float | None) -> StepFailed:
        try:
            journal = self.t.manager.logs(p.unit, 15).rstrip().splitlines()
        except HostError as exc:
            journal = [f"(journal unavailable: {exc})"]
        err = StepFailed(f"health gate failed for {p.id}: {why}")
        err.details = lambda: [f"last lines of {p.unit} ({self.t.manager.kind} log):"] + ["  " + ln for ln in journal[-15:]]  # type: ignore[method-assign]
        return err


def raise_if_failed(report: SwitchReport) -> None:
    if not report.ok:
        raise SwitchFailed(report.error, report.state_lines, report.as_dict())
