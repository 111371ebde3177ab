"""Learn what services really hold, and plan with it.

- ``apply`` (pure): the catalog with measured figures in place of the declared ones
  (``vram_mb``, ``sleep_vram_mb``; the declared ones kept in ``declared_*`` and the source in
  ``vram_source`` / ``sleep_source``; per-level residuals and learned durations on the preset).
  Planning runs on that catalog, so every check (fit, alternatives, totals, the daemon's choice)
  uses the measured figure where one exists; units are always rendered from the declared one.
- ``learn_from_run``: after a run, record what each service it settled holds (per GPU, once the
  GPU's figures stopped moving) and how long its transitions took, into the target's
  ``footprints.json`` (written through the Host, so it works over SSH; only when something new
  was learned). It never fails a run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .catalog.model import Catalog, Preset, SleepMode
from .footprints import DURATIONS, WINDOW, Footprints, Sample, Timing, digest_of, dump, footprints_file, robust_seconds, sleep_state

if TYPE_CHECKING:
    from .execute import SwitchReport
    from .observed import Observed, RenderedUnit
    from .target import Target

log = logging.getLogger("gpumod.learn")

SETTLE_POLL_S = 0.3  # a sleep's release is settled when two observations this far apart agree
SETTLE_MAX_S = 8.0


# -- planning with learned figures (pure) ---------------------------------------------------

def apply(catalog: Catalog, fp: Footprints, digests: Mapping[str, str],
          asleep_at: Mapping[str, int | None] | None = None) -> Catalog:
    """``catalog`` with every preset's learned figures (those whose digest still matches).

    The residual planned for a sleeping service is the one measured at the level it sleeps at now
    (``asleep_at``), else at its preset's sleep level, else the largest measured one."""
    if not fp.services():
        return catalog
    presets = {sid: with_figures(p, fp, digests.get(sid, ""), (asleep_at or {}).get(sid))
               for sid, p in catalog.presets.items()}
    return replace(catalog, presets=presets)


def with_figures(p: Preset, fp: Footprints, digest: str, asleep_level: int | None = None) -> Preset:
    if not digest or p.id not in fp.services():
        return p
    awake = fp.figure(p.id, "awake", digest)
    residuals: list[tuple[int, int]] = []
    for level in (1, 2):
        f = fp.figure(p.id, f"sleep_l{level}", digest)
        if f is not None:
            residuals.append((level, f.mb))
    unloaded = fp.figure(p.id, "unloaded", digest)
    if unloaded is not None:
        residuals.append((0, unloaded.mb))
    learned = tuple((k, s) for k in DURATIONS if (s := fp.seconds(p.id, k, digest)) is not None)
    by_level = dict(residuals)
    want = asleep_level if asleep_level is not None else (0 if p.sleep_mode is SleepMode.ROUTER else p.sleep_mode.level)
    residual = by_level.get(want) if want in by_level else (max(by_level.values()) if by_level and want != 0 else None)
    out = replace(p, declared_vram_mb=p.vram_mb, declared_sleep_vram_mb=p.sleep_vram_mb, residuals_mb=tuple(residuals),
                  learned_s=learned)
    if awake is not None:
        out = replace(out, vram_mb=awake.mb, vram_source="measured", measured_gpu_mb=tuple(sorted(awake.gpu_mb.items())))
    if residual is not None:
        out = replace(out, sleep_vram_mb=residual, sleep_source="measured")
    return out


def declared_mb(p: Preset) -> int:
    return p.declared_vram_mb if p.declared_vram_mb is not None else p.vram_mb


def declared_residual_mb(p: Preset) -> int:
    """The residual the preset itself says (or its engine's default)."""
    if p.sleep_source != "measured":
        return p.residual_mb
    return p.declared_sleep_vram_mb if p.declared_sleep_vram_mb is not None else replace(
        p, vram_mb=declared_mb(p), sleep_vram_mb=None).residual_mb


def measured_lines(catalog: Catalog) -> list[str]:
    """For a refusal: the figures it used that were measured, with what the preset declares."""
    out = []
    for p in catalog.presets.values():
        if p.vram_source == "measured":
            out.append(f"  {p.id}: {p.vram_mb} MB measured awake (declared {declared_mb(p)} MB)")
        if p.sleep_source == "measured":
            out.append(f"  {p.id}: {p.residual_mb} MB measured asleep (declared {declared_residual_mb(p)} MB)")
    return ["learned figures (footprints.json) used:", *out] if out else []


# -- digests and the measured catalog of a target -------------------------------------------

def digests(target: Target, ids: Iterable[str], rendered: Mapping[str, RenderedUnit] | None = None) -> dict[str, str]:
    """The digest of each preset in ``ids`` with the unit it renders to now (units not in
    ``rendered`` are rendered here: from the render cache, no host contact)."""
    from .unit_install import render_units

    cat = target.catalog
    have = dict(rendered or {})
    missing = [cat.presets[s] for s in ids if s in cat.presets and cat.presets[s].unit not in have]
    if missing:
        have.update(render_units(target, missing))
    return {s: digest_of(cat.presets[s], have[cat.presets[s].unit].body) for s in ids
            if s in cat.presets and cat.presets[s].unit in have}


def measured_catalog(target: Target, seen: Observed, rendered: Mapping[str, RenderedUnit] | None = None) -> Catalog:
    """The target's catalog with the figures its store holds (the declared catalog when none)."""
    fp = seen.footprints
    if not fp.services():
        return target.catalog
    try:
        ds = digests(target, sorted(fp.services() & set(target.catalog.presets)), rendered)
    except Exception as exc:  # noqa: BLE001 - a unit that does not render plans on declared figures
        log.warning("warning: learned figures not applied (%s)", exc)
        return target.catalog
    asleep = {sid: o.sleep_level for sid, o in seen.services.items() if o.state.value == "sleeping"}
    return apply(target.catalog, fp, ds, asleep)


# -- learning after a run ---------------------------------------------------------------------

def settled_states(report: SwitchReport) -> tuple[dict[str, str], list[tuple[str, str, float]]]:
    """Pure: from a run's step results, the state each service was settled in (last wins) and
    the durations (service, kind, seconds) of its transitions."""
    from .plan.steps import RouterLoad, RouterUnload, Sleep, Start, Stop, Wake

    states: dict[str, str] = {}
    times: list[tuple[str, str, float]] = []
    for r in report.results:
        if r.status != "changed":
            continue
        s = r.step
        if isinstance(s, Start):
            if s.router:
                continue  # its model's RouterLoad is the transition
            states[s.service], kind = "awake", "start"
        elif isinstance(s, Wake):
            states[s.service], kind = "awake", f"wake_l{s.level}"
        elif isinstance(s, RouterLoad):
            states[s.service], kind = "awake", "router_load"
        elif isinstance(s, Sleep):
            states[s.service], kind = f"sleep_l{s.level}", f"sleep_l{s.level}"
        elif isinstance(s, RouterUnload):
            states[s.service], kind = "unloaded", "router_unload"
        elif isinstance(s, Stop):
            states.pop(s.service, None)
            kind = "stop"
        else:
            continue
        times.append((s.service, kind, r.seconds))
    return states, times


def matches(state: str, o: Any) -> bool:
    """Is the observed service (ServiceObs) in the figure state ``state``?"""
    if state == "awake":
        return bool(o.state.value == "running")
    return bool(o.state.value == "sleeping" and sleep_state(o.sleep_level) == state)


def sample_of(o: Any) -> dict[int, int]:
    """What it holds per GPU (``gpu_mb`` when the observation splits it, else all on GPU 0)."""
    per = {int(g): int(mb) for g, mb in (o.gpu_mb or {}).items() if mb}
    if not per and o.vram_mb:
        per = {0: int(o.vram_mb)}
    return per


def learn_from_run(target: Target, report: SwitchReport, rendered: Mapping[str, RenderedUnit] | None = None) -> Footprints | None:
    """Record the figures and durations of what ``report``'s run settled (None: nothing new)."""
    try:
        return _learn(target, report, rendered)
    except Exception as exc:  # noqa: BLE001 - learning is advisory: the run's outcome stands
        log.warning("warning: footprints not recorded: %s", exc)
        return None


def worth_recording(rows: list[Sample], digest: str, per: Mapping[int, int]) -> bool:
    """Pure: does a new sample add anything? Always until the window is full; then only when it
    differs from the newest one of the same digest by more than 1 % on some GPU (so a box in a
    steady state writes nothing, and a real change is seen at once)."""
    same = [s for s in rows if s.digest == digest]
    if len(same) < WINDOW:
        return True
    last = same[-1].gpu_mb
    return any(abs(per.get(g, 0) - last.get(g, 0)) > max(1, 0.01 * max(per.get(g, 0), last.get(g, 0)))
               for g in set(per) | set(last))


def timing_worth_recording(rows: list[Timing], digest: str, secs: float) -> bool:
    """Pure: the same for a duration: until the window is full, then when 25 % off the median."""
    same = [t for t in rows if t.digest == digest]
    if len(same) < WINDOW:
        return True
    med = robust_seconds(same, digest) or 0.0
    return abs(secs - med) > 0.25 * max(med, 0.01)


def _learn(target: Target, report: SwitchReport, rendered: Mapping[str, RenderedUnit] | None) -> Footprints | None:
    from .observe import observe

    states, times = settled_states(report)
    if not states and not times:
        return None
    ids = sorted(set(states) | {s for s, _, _ in times})
    ds = digests(target, ids, rendered)
    want = {s: st for s, st in states.items() if s in ds}
    fp: Footprints | None = None
    if want:
        # every service (a subset would take the others' processes for strays or exiting ones)
        seen = _settle(target, want, observe(target), ds)
        fp = seen.footprints
    else:
        from .footprints import parse

        fp = parse(target.host.read_file(footprints_file(target.state_dir)))
        seen = None
    now = time.time()
    changed = False
    if seen is not None and seen.gpu is not None and not seen.releasing:
        per_pid_known = any(g.per_pid for g in seen.gpu.gpus)
        for sid, state in want.items():
            o = seen.services.get(sid)
            if o is None or not matches(state, o) or _shares_its_memory(target.catalog, seen, sid):
                continue
            per = sample_of(o)
            if not per and (state == "awake" or not per_pid_known):
                continue  # no per-process figure (WDDM, a container without the host's pids): nothing learned
            if worth_recording(fp.figures.get(sid, {}).get(state, []), ds[sid], per):
                fp.add_figure(sid, state, Sample(now, ds[sid], per))
                changed = True
    for sid, kind, secs in times:
        if sid in ds and kind in DURATIONS and timing_worth_recording(fp.durations.get(sid, {}).get(kind, []), ds[sid], secs):
            fp.add_duration(sid, kind, Timing(now, ds[sid], secs))
            changed = True
    if changed:
        target.host.write_file(footprints_file(target.state_dir), dump(fp))
    return fp if changed else None


def _shares_its_memory(cat: Catalog, seen: Observed, sid: str) -> bool:
    """A router model while another model of its router is loaded too: the observation cannot
    tell their memory apart (the router's processes are one unit), so neither is learned."""
    return any(q.id != sid and q.id in seen.services and seen.services[q.id].state.value == "running"
               for q in cat.unit_peers(cat.presets[sid]))


def _settle(target: Target, want: Mapping[str, str], seen: Observed, ds: Mapping[str, str]) -> Observed:
    """The observation to measure from, once what the settled services hold stopped moving.

    A start, wake or load holds all it will once its health gate passed. A sleep or unload may
    give its memory back after its answer (a llama.cpp child exits later; the simulator's
    release lag): when a sleeper holds more than its expected residual (declared or learned,
    plus the release tolerance), observe again until two observations agree and nothing is
    being released, at most ``SETTLE_MAX_S``. In a steady state nothing is polled."""
    from .observe import observe

    tolerance = target.spec.release_tolerance_mb
    fp = seen.footprints

    def settled(obs: Observed) -> bool:
        if obs.releasing:
            return False
        for sid, state in want.items():
            if state == "awake" or sid not in obs.services:
                continue
            p = target.catalog.presets[sid]
            learned = fp.figure(sid, state, ds.get(sid, ""))
            expected = max(0 if state == "unloaded" else p.residual_mb, learned.mb if learned else 0)
            if obs.services[sid].vram_mb > expected + tolerance:
                return False
        return True

    if settled(seen):
        return seen
    deadline = time.monotonic() + SETTLE_MAX_S
    last = {s: seen.services[s].vram_mb for s in want if s in seen.services}
    while time.monotonic() < deadline:
        time.sleep(SETTLE_POLL_S)
        nxt = observe(target)
        now = {s: nxt.services[s].vram_mb for s in want if s in nxt.services}
        if (now == last or settled(nxt)) and not nxt.releasing:
            return nxt
        seen, last = nxt, now
    return seen


# -- the store on its own (views without an observation) -----------------------------------

def read_store(target: Target) -> Footprints:
    """The target's store, read on its own (views without an observation: one read)."""
    from .footprints import parse

    return parse(target.host.read_file(footprints_file(target.state_dir)))


def catalog_from_store(target: Target, fp: Footprints) -> Catalog:
    if not fp.services():
        return target.catalog
    try:
        ds = digests(target, sorted(fp.services() & set(target.catalog.presets)))
    except Exception as exc:  # noqa: BLE001
        log.warning("warning: learned figures not applied (%s)", exc)
        return target.catalog
    return apply(target.catalog, fp, ds)


def off_by(declared: int, measured: int) -> float:
    """How far a declared figure is from the measured one, as a fraction of the measured."""
    return abs(declared - measured) / measured if measured else (0.0 if not declared else 1.0)
