"""The release wait after leaving steps (pure): the GPU memory each GPU should be down to.

On a one-GPU box: used now - what the leaving steps free (``WaitRelease.expected_used_mb``). On a
box with several GPUs, per GPU involved (those the leaving services held): its used now - what
they free there, split like what they held there (a tensor-parallel service frees on each of its
GPUs). A GPU no leaving service held is not waited for.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..catalog.model import Catalog
from ..observed import Observed
from .placement import held
from .policy import Policy
from .steps import Step, Stop, WaitRelease


def freed_by_gpu(catalog: Catalog, seen: Observed, step: Step) -> dict[int, int]:
    """What one leaving step frees on each GPU: its ``frees_mb`` spread like what its service (a
    router unit's Stop: its models) holds per GPU now."""
    sid = getattr(step, "service", "")
    frees = int(getattr(step, "frees_mb", 0) or 0)
    if not sid or frees <= 0 or sid not in catalog.presets:
        return {}
    holders = [sid]
    if isinstance(step, Stop) and catalog.presets[sid].router:
        holders = [q.id for q in catalog.unit_peers(catalog.presets[sid])]
    base: dict[int, int] = {}
    for h in holders:
        o = seen.services.get(h)
        if o is None:
            continue
        for g, mb in (o.gpu_mb or dict.fromkeys(held(seen, h), o.vram_mb)).items():
            base[g] = base.get(g, 0) + mb
    total = sum(base.values())
    if total <= 0:
        first = held(seen, sid) or seen.gpu_indices[:1] or (0,)
        return {first[0]: frees}
    out = {g: frees * mb // total for g, mb in sorted(base.items())}
    out[min(out)] += frees - sum(out.values())
    return out


def release_wait(catalog: Catalog, seen: Observed, leaving: Sequence[Step], policy: Policy,
                 releasing: tuple[str, ...] = ()) -> WaitRelease:
    freed = sum(getattr(s, "frees_mb", 0) for s in leaving)
    expected = max(0, seen.gpu_used_mb - freed)
    if not seen.multi_gpu:
        return WaitRelease(expected, policy.release_tolerance_mb, releasing)
    per: dict[int, int] = {}
    for s in leaving:
        for g, mb in freed_by_gpu(catalog, seen, s).items():
            per[g] = per.get(g, 0) + mb
    figures = tuple((g, max(0, seen.used_on(g) - mb)) for g, mb in sorted(per.items()))
    if not figures:  # nothing it frees is known per GPU: no GPU may grow
        figures = tuple((g, seen.used_on(g)) for g in seen.gpu_indices)
    return WaitRelease(sum(mb for _, mb in figures), policy.release_tolerance_mb, releasing, figures)


def releasing_wait(seen: Observed, policy: Policy) -> WaitRelease:
    """The wait for memory of processes on their way out (``Observed.releasing``), per GPU it is on."""
    names = tuple(f"{r.describe()} ({r.mb} MB)" for r in seen.releasing)
    expected = max(0, seen.gpu_used_mb - seen.releasing_mb)
    if not seen.multi_gpu:
        return WaitRelease(expected, policy.release_tolerance_mb, names)
    involved = sorted({g for r in seen.releasing for g in (r.gpu_mb or {seen.gpu_indices[0]: r.mb})})
    figures = tuple((g, max(0, seen.used_on(g) - seen.releasing_on(g))) for g in involved)
    return WaitRelease(sum(mb for _, mb in figures), policy.release_tolerance_mb, names, figures)
