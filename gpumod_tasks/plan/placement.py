"""Which GPUs each service runs on, and each GPU's arithmetic (pure).

Each GPU's budget is its total - the reserve - the memory of processes gpumod does not run on it.
A service that holds GPUs now (running, starting, asleep) keeps them: it is never moved silently.
Only when its pin or its GPU count no longer matches what it holds is it placed again, and the
plan shows that move as a stop and a start (its unit is rendered for the new GPUs, so the unit
differs and the stale-unit rule restarts it). A pinned service goes on its pins (an index or a
UUID); an unpinned one is placed by best fit: of the sets of GPUs with room for each of its
shares, the one that leaves the least free on them, ties to the lowest indices. A service with no
VRAM of its own goes on the lowest GPU (or its pins): its unit then never changes with the load.
Charges follow ``Preset.per_gpu_mb`` (even for tensor parallel, ``tensor_split`` ratios for
llama.cpp): awake services their ``vram_mb``, sleeping ones their residual.

On a box with one GPU everything is on it, and the fit is the single-GPU rule it always was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import combinations

from ..catalog.model import Catalog, GpuAssignment, Preset
from ..observed import Observed
from .policy import Policy
from .result import GpuPlan


@dataclass(frozen=True)
class Slot:
    index: int
    total_mb: int
    budget_mb: int  # total - reserve - foreign processes on it
    uuid: str = ""
    name: str = ""


@dataclass
class Placement:
    """Service -> the GPU indices it runs on (its GPU order), and what could not be placed well."""

    gpus: dict[str, tuple[int, ...]] = field(default_factory=dict)
    moved: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)  # sid -> (GPUs it held, why it moves)
    unplaced: dict[str, str] = field(default_factory=dict)  # sid -> why no GPU set has room for it
    impossible: dict[str, str] = field(default_factory=dict)  # sid -> why no GPU of this box can take it (pin, count)

    def of(self, sid: str) -> tuple[int, ...]:
        return self.gpus.get(sid, ())


def slots(seen: Observed, policy: Policy) -> list[Slot]:
    out = []
    for g in (seen.gpu.gpus if seen.gpu else ()):
        total = g.total_mb or 0
        out.append(Slot(g.index, total, total - policy.reserve_mb - seen.foreign_on(g.index), g.uuid, g.name))
    return out


def box_mb(seen: Observed, policy: Policy) -> tuple[int, int]:
    """(total, budget) for a plan's whole-box figures: one GPU's as ever; on a box with several,
    their sums (each GPU's total - the reserve), so ``Plan.projected_mb`` compares with them."""
    if not seen.multi_gpu:
        return seen.gpu_total_mb, seen.gpu_total_mb - policy.reserve_mb
    totals = [g.total_mb or 0 for g in seen.gpu.gpus] if seen.gpu else []
    return sum(totals), sum(totals) - policy.reserve_mb * len(totals)


def held(seen: Observed, sid: str) -> tuple[int, ...]:
    """The GPUs a service holds memory on now (a one-GPU box: that GPU, whatever was reported)."""
    o = seen.services.get(sid)
    if o is None or not o.holds_gpu:
        return ()
    if o.gpu_indices:
        return o.gpu_indices
    ix = seen.gpu_indices
    return ix[:1] if len(ix) == 1 else ()


def resolve_pin(seen: Observed, p: Preset) -> tuple[int, ...] | None:
    """A preset's pins as GPU indices of this box (None: a pin names a GPU the box does not have)."""
    by_uuid = {g.uuid: g.index for g in (seen.gpu.gpus if seen.gpu else ()) if g.uuid}
    have = set(seen.gpu_indices)
    out = []
    for pin in p.gpu_pin:
        if pin.isdigit():
            if int(pin) not in have:
                return None
            out.append(int(pin))
        elif pin in by_uuid:
            out.append(by_uuid[pin])
        else:
            return None
    return tuple(out)


def move_reason(seen: Observed, p: Preset) -> str:
    """Why a service that holds GPUs now must move ("" when it stays): its pin or its GPU count
    no longer matches what it holds. (Only a restart moves it.)"""
    cur = held(seen, p.id)
    if not cur:
        return ""
    pin = resolve_pin(seen, p) if p.gpu_pin else ()
    if pin and set(cur) != set(pin):
        return f"moves from {_gpus(cur)} to {_gpus(pin)} (its pin)"
    o = seen.services[p.id]
    settled = o.state.value in ("running", "sleeping")  # a starting one may not hold all its GPUs yet
    if not pin and pin is not None and settled and len(cur) != max(1, p.gpus) and o.gpu_indices:
        return f"moves from {_gpus(cur)} to {max(1, p.gpus)} GPUs (its GPU count changed)"
    return ""


def shares(p: Preset, mb: int, gpus: tuple[int, ...]) -> dict[int, int]:
    """``mb`` of ``p`` charged on its GPUs (in its GPU order)."""
    split = p.per_gpu_mb(mb) if len(gpus) == max(1, p.gpus) else (mb // max(1, len(gpus)),) * len(gpus)
    out: dict[int, int] = {}
    for g, s in zip(gpus, split, strict=False):
        out[g] = out.get(g, 0) + s
    return out


def _charge(catalog: Catalog, sid: str, awake: bool) -> int:
    p = catalog.presets[sid]
    return p.vram_mb if awake else p.residual_mb


def assignment(seen: Observed, gpus: tuple[int, ...]) -> GpuAssignment:
    """What a unit is rendered with: the indices and, where the box reported them, their UUIDs."""
    by = {g.index: g for g in (seen.gpu.gpus if seen.gpu else ())}
    return GpuAssignment(gpus, tuple(by[i].uuid if i in by else "" for i in gpus),
                         tuple((by[i].total_mb or 0) if i in by else 0 for i in gpus))


def place(catalog: Catalog, seen: Observed, policy: Policy, awake: Iterable[str], sleeping: Iterable[str],
          fixed: Mapping[str, tuple[int, ...]] | None = None) -> Placement:
    """Place every awake and sleeping service of the plan. ``fixed``: placements decided already
    (the pre-pass the units were rendered with): kept as they are."""
    awake = list(dict.fromkeys(awake))
    asleep = [s for s in dict.fromkeys(sleeping) if s not in awake]
    sl = slots(seen, policy)
    budget = {s.index: s.budget_mb for s in sl}
    load = dict.fromkeys(budget, 0)
    out = Placement()
    todo: list[str] = []
    for sid in awake + asleep:
        p = catalog.presets[sid]
        want = max(1, p.gpus)
        cur = held(seen, sid)
        pin = resolve_pin(seen, p) if p.gpu_pin else ()
        if fixed and sid in fixed:
            gpus = fixed[sid]
        elif cur and sid in asleep:  # its residual stays where it is until it wakes or stops
            gpus = cur
        elif pin is None:
            out.impossible[sid] = (f"{sid} is pinned to GPU {', '.join(p.gpu_pin)}, which this box does not have "
                                 f"(it has {_names(sl)})")
            if cur:
                gpus = cur
            else:
                continue
        elif pin:
            gpus = pin
            if cur and set(cur) != set(pin):
                out.moved[sid] = (cur, move_reason(seen, p))
        elif cur and len(cur) == want:
            gpus = cur
        elif want > len(sl):
            out.impossible[sid] = f"{sid} needs {want} GPUs; this box has {len(sl)}"
            if cur:
                gpus = cur
            else:
                continue
        elif p.vram_mb == 0:
            gpus = tuple(s.index for s in sl[:want])
        else:
            if cur:
                out.moved[sid] = (cur, move_reason(seen, p))
            todo.append(sid)
            continue
        out.gpus[sid] = gpus
        for g, mb in shares(p, _charge(catalog, sid, sid in awake), gpus).items():
            load[g] = load.get(g, 0) + mb
    for sid in [s for s in awake if catalog.presets[s].gpu_pin and s in out.gpus and s not in out.impossible]:
        p = catalog.presets[sid]
        mine = shares(p, _charge(catalog, sid, True), out.gpus[sid])
        if any(load[g] > budget[g] for g in mine) and held(seen, sid) != out.gpus[sid]:
            free = ", ".join(f"GPU{g} {budget[g] - load[g] + mb} MB free" for g, mb in mine.items())
            need = ", ".join(f"{mb} MB on GPU{g}" for g, mb in mine.items())
            out.unplaced[sid] = f"{sid} is pinned and needs {need}: {free}"
    # those with no choice first (a router's model whose router is placed already), those on the most
    # GPUs next, then the largest (their choice is the narrowest), then by id: deterministic
    def order(s: str) -> tuple[bool, int, int, str]:
        q = catalog.presets[s]
        pinned = any(r.id in out.gpus for r in catalog.unit_peers(q))
        return (not pinned, -q.gpus, -max(q.per_gpu_mb(_charge(catalog, s, s in awake))), s)

    todo.sort(key=order)
    for sid in todo:
        p = catalog.presets[sid]
        mb = _charge(catalog, sid, sid in awake)
        cur = held(seen, sid)
        peer = next((out.gpus[q.id] for q in catalog.unit_peers(p) if q.id in out.gpus), None)
        if peer is not None:  # a model of a llama.cpp router runs in its router's process: on its GPUs
            out.gpus[sid] = peer
            for g, m in shares(p, mb, peer).items():
                load[g] += m
            if any(load[g] > budget[g] for g in peer):
                out.unplaced[sid] = f"{sid} runs in its router's process on {_gpus(peer)}: " + ", ".join(
                    f"GPU{g} {budget[g] - load[g] + m} MB free" for g, m in shares(p, mb, peer).items())
            continue
        best: tuple[tuple[int, int, int, tuple[int, ...]], tuple[int, ...]] | None = None
        for combo in combinations(sorted(budget), max(1, p.gpus)):
            ch = shares(p, mb, combo)
            excess = sum(max(0, load[g] + ch[g] - budget[g]) for g in combo)
            left = sum(budget[g] - load[g] - ch[g] for g in combo)
            key = (excess, left if not excess else 0, -len(set(combo) & set(cur)), combo)
            if best is None or key < best[0]:
                best = (key, combo)
        assert best is not None
        gpus = best[1]
        if best[0][0]:
            out.unplaced[sid] = no_room(catalog, sid, mb, sl, load)
        out.gpus[sid] = gpus
        for g, m in shares(p, mb, gpus).items():
            load[g] += m
    return out


def no_room(catalog: Catalog, sid: str, mb: int, sl: list[Slot], load: Mapping[int, int]) -> str:
    """"no GPU has 20000 MB: GPU0 12000 MB free, GPU1 8000 MB free" (before ``sid`` is placed)."""
    p = catalog.presets[sid]
    need = max(p.per_gpu_mb(mb))
    free = ", ".join(f"GPU{s.index} {s.budget_mb - load.get(s.index, 0)} MB free" for s in sl)
    if max(1, p.gpus) > 1:
        return f"no {max(1, p.gpus)} GPUs have {need} MB each for {sid}: {free}"
    return f"no GPU has {need} MB for {sid}: {free}"


def per_gpu(catalog: Catalog, seen: Observed, policy: Policy, placement: Placement, awake: Iterable[str],
            sleeping: Iterable[str]) -> tuple[GpuPlan, ...]:
    """Each GPU's arithmetic after the plan (projected: gpumod's services on it)."""
    awake = list(dict.fromkeys(awake))
    proj: dict[int, int] = {}
    for sid in list(awake) + [s for s in sleeping if s not in awake]:
        gpus = placement.of(sid)
        for g, mb in shares(catalog.presets[sid], _charge(catalog, sid, sid in awake), gpus).items():
            proj[g] = proj.get(g, 0) + mb
    return tuple(GpuPlan(s.index, s.total_mb, s.budget_mb, proj.get(s.index, 0), s.uuid, s.name) for s in slots(seen, policy))


def static_gpus(seen: Observed, p: Preset) -> tuple[int, ...]:
    """The GPUs of a service outside any plan's placement (a stopped one whose unit is written
    ahead, ``template.diff``): its pins, else the lowest GPUs."""
    pin = resolve_pin(seen, p) if p.gpu_pin else ()
    return pin or seen.gpu_indices[:max(1, p.gpus)]


def arithmetic(catalog: Catalog, seen: Observed, policy: Policy, awake: Iterable[str], sleeping: Iterable[str],
               fixed: Mapping[str, tuple[int, ...]] | None = None) -> tuple[Placement, tuple[GpuPlan, ...]]:
    """The placement and each GPU's arithmetic, checking nothing (a plan that loads nothing)."""
    awake, sleeping = list(awake), list(sleeping)
    pl = place(catalog, seen, policy, awake, sleeping, fixed)
    return pl, per_gpu(catalog, seen, policy, pl, awake, sleeping)


def over(gpus: Iterable[GpuPlan]) -> list[GpuPlan]:
    return [g for g in gpus if g.projected_mb > g.budget_mb]


def _gpus(ix: Iterable[int]) -> str:
    ix = list(ix)
    return ("GPUs " if len(ix) > 1 else "GPU ") + ",".join(map(str, ix))


def _names(sl: list[Slot]) -> str:
    return ", ".join(f"GPU{s.index}" + (f" {s.uuid}" if s.uuid else "") for s in sl) or "no GPU"
