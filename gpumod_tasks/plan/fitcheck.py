"""Plan-time checks (pure): VRAM fit with the alternatives offered, and the host-RAM preflight.

Fit rule: awake services (preset vram_mb) + what sleeping services still hold + GPU memory of
processes gpumod does not run must stay within ``GPU total - reserve``. A refusal says the
arithmetic, the alternatives, and that nothing was changed. On a box with several GPUs the rule
holds on each GPU, for the placement ``placement.py`` decides (``fit_gpus``): a set that fits in
total but on no GPU is refused with each GPU's free MB, and the alternatives name another
placement (a pin dropped) or what to sleep or stop on the GPU that is needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from ..catalog.model import Catalog
from ..errors import PlanRefused
from ..fit import alternatives
from ..observed import Observed, SvcState
from .placement import Placement, over, per_gpu, place, shares
from .policy import Policy
from .result import GpuPlan
from .steps import RouterLoad, Start, Step, Wake

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
    from .release import releasing_wait

    return [releasing_wait(seen, policy), *steps]


def fit_gpus(catalog: Catalog, seen: Observed, awake: list[str], sleeping: Mapping[str, int], policy: Policy, what: str,
             *, arriving: Iterable[str] = (), fixed: Mapping[str, tuple[int, ...]] | None = None
             ) -> tuple[int, Placement, tuple[GpuPlan, ...]]:
    """The VRAM fit on every GPU: (projected MB as ``refuse_unless_fits`` counts it, the placement,
    each GPU's arithmetic); raises PlanRefused (nothing changed) when a GPU would not hold its share.
    A box with one GPU keeps the single-GPU rule and its words."""
    arriving = list(arriving)
    pl = place(catalog, seen, policy, awake, sleeping, fixed)
    gpus = per_gpu(catalog, seen, policy, pl, awake, sleeping)
    if not seen.multi_gpu:
        if pl.impossible:
            raise PlanRefused(f"{what} cannot be placed: {next(iter(pl.impossible.values()))}; nothing was changed")
        return refuse_unless_fits(catalog, seen, awake, sleeping, policy, what, arriving=arriving), pl, gpus
    proj = projected_mb(catalog, awake, sleeping, seen.external_mb)
    if pl.impossible:
        raise PlanRefused(f"{what} cannot be placed: {next(iter(pl.impossible.values()))}; nothing was changed")
    if not gpus or (not pl.unplaced and not over(gpus)):
        return proj, pl, gpus
    mine = sum(g.projected_mb for g in gpus)
    room = sum(g.budget_mb for g in gpus)
    lines = [f"GPU{g.index}{' ' + g.name if g.name else ''}: {g.projected_mb} MB of {g.budget_mb} MB "
             f"({g.total_mb} MB - {policy.reserve_mb} MB reserve"
             + (f" - {seen.foreign_on(g.index)} MB other processes" if seen.foreign_on(g.index) else "") + ")"
             + (f": over by {g.projected_mb - g.budget_mb} MB" if g.projected_mb > g.budget_mb else "") for g in gpus]
    lines += [f"  {'awake' if s in awake else 'asleep'} {s} on {','.join(f'GPU{i}' for i in pl.of(s))}: "
              f"{catalog.presets[s].vram_mb if s in awake else catalog.presets[s].residual_mb} MB"
              for s in list(awake) + [s for s in sleeping if s not in awake] if pl.of(s)]
    alts = ["alternatives:"] + _gpu_room(catalog, seen, policy, awake, sleeping, pl, arriving)
    if mine > room:
        tot = sum(g.total_mb for g in gpus)
        alts += [f"  {'fits' if a.fits else 'no  '}  {a.description}"
                 for a in alternatives(catalog, [catalog.presets[s] for s in awake], tot, tot - room)]
        raise PlanRefused(f"{what} does not fit: {mine} MB > {room} MB on {len(gpus)} GPUs (each GPU's total - "
                          f"{policy.reserve_mb} MB reserve - other processes; over by {mine - room} MB); nothing was changed",
                          lines + alts)
    why = next(iter(pl.unplaced.values()), "") or "; ".join(
        f"GPU{g.index} would hold {g.projected_mb} MB > {g.budget_mb} MB" for g in over(gpus))
    raise PlanRefused(f"{what} fits in total ({mine} / {room} MB) but {why}; nothing was changed", lines + alts)


def _gpu_room(catalog: Catalog, seen: Observed, policy: Policy, awake: list[str], sleeping: Mapping[str, int],
              pl: Placement, arriving: list[str]) -> list[str]:
    """What would make the plan fit on the GPUs: another placement (a pin dropped), sleeping or
    stopping one service that holds a GPU the plan needs."""
    out: list[str] = []
    for sid in [s for s in arriving if catalog.presets[s].gpu_pin and s in pl.unplaced]:
        p = catalog.presets[sid]
        free = replace(catalog, presets={**catalog.presets, sid: replace(p, gpu_pin=())})
        alt = place(free, seen, policy, awake, sleeping)
        if sid not in alt.unplaced and not over(per_gpu(free, seen, policy, alt, awake, sleeping)):
            out.append(f"  fits  unpin {sid} (gpu: {', '.join(p.gpu_pin)}): it fits on "
                       f"{','.join(f'GPU{i}' for i in alt.of(sid))}")
    for sid in [s for s in awake if s not in arriving] + [s for s in sleeping if s not in awake]:
        p = catalog.presets[sid]
        asleep = sid not in awake
        frees = p.residual_mb if asleep else (p.vram_mb - p.residual_mb if p.can_sleep else p.vram_mb)
        if frees <= 0 or not pl.of(sid):
            continue
        less_awake = [s for s in awake if s != sid]
        less_sleep = {s: v for s, v in sleeping.items() if s != sid}
        if not asleep and p.can_sleep:
            less_sleep[sid] = p.sleep_mode.level or 1
        alt = place(catalog, seen, policy, less_awake, less_sleep)
        if alt.unplaced or over(per_gpu(catalog, seen, policy, alt, less_awake, less_sleep)):
            continue
        on = ", ".join(f"{mb} MB on GPU{g}" for g, mb in shares(p, frees, pl.of(sid)).items())
        verb = "stop" if asleep else ("sleep" if p.can_sleep else "stop")
        out.append(f"  fits  {verb} {sid}" + (" (asleep, holds " if asleep else " first (frees ") + on + ")")
    return out
