"""Plan-time checks (pure): VRAM fit with the alternatives offered, and the host-RAM preflight.

Fit rule: awake services (preset vram_mb) + what sleeping services still hold + GPU memory of
processes gpumod does not run must stay within ``GPU total - reserve``. A refusal says the
arithmetic, the alternatives, and that nothing was changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..catalog.model import Catalog
from ..errors import PlanRefused
from ..fit import alternatives
from ..observed import Observed, SvcState
from .policy import Policy
from .steps import RouterLoad, Start, Step, WaitRelease, Wake

LOADS = (Start, Wake, RouterLoad)


def projected_mb(catalog: Catalog, awake: Iterable[str], sleeping: Mapping[str, int], external_mb: int) -> int:
    return (sum(catalog.presets[s].vram_mb for s in awake)
            + sum(catalog.presets[s].residual_mb for s in sleeping) + external_mb)


def room_lines(catalog: Catalog, seen: Observed, awake: list[str], sleeping: Mapping[str, int], over_mb: int,
               exclude: set[str]) -> list[str]:
    """What else would make room: sleeping or stopping one running service outside ``exclude``."""
    out = []
    for sid in awake:
        if sid in exclude:
            continue
        p = catalog.presets[sid]
        if p.can_sleep and p.vram_mb - p.residual_mb >= over_mb:
            out.append(f"  fits  sleep {sid} first (frees {p.vram_mb - p.residual_mb} MB)")
        elif p.vram_mb >= over_mb:
            out.append(f"  fits  stop {sid} first (frees {p.vram_mb} MB)")
    for sid in sleeping:
        res = catalog.presets[sid].residual_mb
        if sid not in exclude and res >= over_mb:
            out.append(f"  fits  stop {sid} (asleep, holds {res} MB)")
    return out


def refuse_unless_fits(catalog: Catalog, seen: Observed, awake: list[str], sleeping: Mapping[str, int], policy: Policy,
                       what: str, *, arriving: Iterable[str] = ()) -> int:
    """Returns the projected MB; raises PlanRefused (nothing changed) when it does not fit."""
    total = seen.gpu_total_mb
    budget = total - policy.reserve_mb
    proj = projected_mb(catalog, awake, sleeping, seen.external_mb)
    if not total or proj <= budget:
        return proj
    lines = [f"awake {s}: {catalog.presets[s].vram_mb} MB" for s in awake]
    lines += [f"asleep {s}: {catalog.presets[s].residual_mb} MB" for s in sleeping if catalog.presets[s].residual_mb]
    if seen.external_mb:
        lines.append(f"other GPU processes: {seen.external_mb} MB (pids {', '.join(map(str, seen.unmapped_pids))})")
    alts = alternatives(catalog, [catalog.presets[s] for s in awake], total, policy.reserve_mb)
    room = room_lines(catalog, seen, awake, sleeping, proj - budget, set(arriving))
    lines += ["alternatives:"] + [f"  {'fits' if a.fits else 'no  '}  {a.description}" for a in alts] + room
    raise PlanRefused(f"{what} does not fit: {proj} MB > {total} MB - {policy.reserve_mb} MB reserve "
                      f"= {budget} MB (over by {proj - budget} MB); nothing was changed", lines)


def l1_sleepers_stopping_credit(catalog: Catalog, seen: Observed, stopping: Iterable[str]) -> int:
    """Host RAM given back by stopping services that sleep at L1 (their weights sit in RAM)."""
    return sum(catalog.presets[s].model_size_mb for s in stopping
               if seen.services[s].state is SvcState.SLEEPING and seen.services[s].sleep_level == 1)


def refuse_unless_ram(catalog: Catalog, seen: Observed, starting: Iterable[str], policy: Policy, *,
                      promised_mb: int = 0, credit_mb: int = 0) -> list[str]:
    """The host-freeze preflight at plan time: every service that loads a model needs
    ``model_size_mb x factor + margin`` of MemAvailable, less what this plan's L1 sleeps will hold.
    (The executor and the unit's ExecStartPre check again, as the last guard.)"""
    ids = [s for s in starting if catalog.presets[s].model_size_mb > 0]
    if not ids:
        return []
    if seen.mem is None:
        return ["host MemAvailable unknown: the RAM preflight is left to the unit's ExecStartPre"]
    avail = seen.mem.available_mb - promised_mb + credit_mb
    for sid in ids:
        p = catalog.presets[sid]
        need = policy.ram_needed_mb(p)
        if avail < need:
            adj = (f" ({seen.mem.available_mb} MB now" + (f", - {promised_mb} MB kept by L1 sleeps in this plan" if promised_mb else "")
                   + (f", + {credit_mb} MB freed by stopping L1 sleepers" if credit_mb else "") + ")") if (promised_mb or credit_mb) else ""
            raise PlanRefused(f"preflight refused {sid}: MemAvailable {avail} MB{adj} < needed {need} MB "
                              f"(model_size_mb {p.model_size_mb} x {policy.preflight_factor:g} + {policy.preflight_margin_mb} MB); "
                              "loading it could freeze the host; nothing was changed")
    return []


def await_releasing(seen: Observed, steps: list[Step], policy: Policy) -> list[Step]:
    """Memory of processes on their way out (``Observed.releasing``: a crashed or killed stop
    seconds ago) is not counted against the fit; a plan that loads anything waits for it first,
    naming whose it is. A plan that loads nothing does not wait (nor does an empty one)."""
    if not seen.releasing or not any(isinstance(s, LOADS) for s in steps):
        return steps
    names = tuple(f"{r.describe()} ({r.mb} MB)" for r in seen.releasing)
    return [WaitRelease(max(0, seen.gpu_used_mb - seen.releasing_mb), policy.release_tolerance_mb, names), *steps]
