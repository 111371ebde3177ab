"""Views of measured footprints: each figure with where it came from (measured / declared), the
declared vs measured table of one service, the expected switch time from a target's state, and
model.info's learned figures. Built on ``learn`` (figures applied to the catalog)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .catalog.model import Catalog, Preset, SleepMode
from .footprints import Footprints
from .learn import declared_mb, declared_residual_mb, digests, read_store

if TYPE_CHECKING:
    from .observed import Observed
    from .target import Target


def figures_dict(p: Preset) -> dict[str, Any]:
    """``--json``: both figures and where the planned one came from."""
    return {"vram_mb": p.vram_mb, "vram_source": p.vram_source, "declared_vram_mb": declared_mb(p),
            "measured_vram_mb": p.vram_mb if p.vram_source == "measured" else None,
            "measured_gpu_mb": {str(g): mb for g, mb in p.measured_gpu_mb} or None,
            "sleep_vram_mb": p.residual_mb, "sleep_source": p.sleep_source, "declared_sleep_vram_mb": declared_residual_mb(p),
            "measured_sleep_mb": {f"l{lv}" if lv else "unloaded": mb for lv, mb in p.residuals_mb} or None,
            "learned_s": dict(p.learned_s) or None}


def footprints_json(cat: Catalog, ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    return [{"id": sid, **figures_dict(cat.presets[sid])} for sid in (ids if ids is not None else cat.presets)]


def label(p: Preset) -> str:
    """``2600 MB measured`` / ``2000 MB declared``."""
    return f"{p.vram_mb} MB {p.vram_source}"


def footprint_rows(p: Preset, fp: Footprints, digest: str) -> list[dict[str, Any]]:
    """Declared vs measured for every state and GPU of one service (``service.show``)."""
    from .footprints import STATES

    declared_state = {"awake": p.vram_mb, "sleep_l1": p.residual_mb if p.can_sleep and p.sleep_mode is not SleepMode.ROUTER else None,
                      "sleep_l2": p.residual_mb if p.can_sleep and p.sleep_mode is not SleepMode.ROUTER else None,
                      "unloaded": 0 if p.sleep_mode is SleepMode.ROUTER else None}
    rows = []
    for state in STATES:
        f = fp.figure(p.id, state, digest)
        stale = sum(1 for s in fp.figures.get(p.id, {}).get(state, []) if s.digest != digest)
        if f is None and declared_state[state] is None:
            continue
        dec = declared_state[state]
        split = p.per_gpu_mb(dec) if dec is not None else ()
        gpus = sorted(set(f.gpu_mb) if f else set()) or list(range(len(split)))
        for i, g in enumerate(gpus):
            dec_g = split[i] if i < len(split) else None
            rows.append({"state": state, "gpu": g, "declared_mb": dec_g, "measured_mb": f.gpu_mb.get(g) if f else None,
                         "samples": f.samples if f else 0, "stale_samples": stale, "at": f.at if f else None})
    return rows


def figures_table(cat: Catalog, ids: Iterable[str], title: str = "figures planned with") -> Any:
    """One row per service: its awake and asleep figures and where each came from."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in ("service", "awake MB", "asleep MB", "declared awake / asleep MB"):
        t.add_column(col, justify="left" if col == "service" else "right")
    for sid in ids:
        p = cat.presets[sid]
        asleep = f"{p.residual_mb} {p.sleep_source}" if p.can_sleep else "-"
        t.add_row(sid, f"{p.vram_mb} {p.vram_source}", asleep,
                  f"{declared_mb(p)} / {declared_residual_mb(p) if p.can_sleep else '-'}")
    return t


# -- expected switch time (mode.simulate) ---------------------------------------------------------

def expected_switch(cat: Catalog, seen: Observed, mode: Any, policy: Any) -> tuple[float | None, int, str]:
    """(expected seconds, steps, why refused) of switching from what ``seen`` shows to ``mode``:
    every step timed by what it took here (learned), else its engine's default."""
    from .daemon.decide import expected_seconds
    from .errors import PlanRefused
    from .plan import plan_switch

    try:
        plan = plan_switch(cat, seen, mode, policy)
    except PlanRefused as exc:
        return None, 0, str(exc).split(";")[0]
    return expected_seconds(plan, cat), len(plan.steps), ""


def mode_alternatives(cat: Catalog, seen: Observed, need: Iterable[str], policy: Any, exclude: str = "") -> list[dict[str, Any]]:
    """Modes containing every service of ``need`` that fit from here, quickest first."""
    need = set(need)
    out = []
    for m in sorted(cat.modes.values(), key=lambda m: m.id):
        if m.id == exclude or not need <= set(m.service_ids):
            continue
        secs, steps, why = expected_switch(cat, seen, m, policy)
        if secs is not None:
            out.append({"mode": m.id, "expected_s": round(secs, 2), "steps": steps})
    return sorted(out, key=lambda a: (a["expected_s"], a["steps"], a["mode"]))


# -- mode.simulate on a target ----------------------------------------------------------------

def simulate_on_target(c: Any, spec: Any, cat: Catalog, name: str | None, ids: list[str], add: list[str] | None) -> dict[str, Any]:
    """What the target adds to a simulation: its learned figures (``catalog``), the figures'
    sources, the expected switch time from its current state, and the modes that would do
    (quickest first). Nothing when it cannot be reached: the declared figures stand."""
    from .catalog.model import Mode, ModeService
    from .cli_context import open_target
    from .learn import measured_catalog
    from .observe import observe
    from .pipeline import policy_for

    try:
        with open_target(c, spec, cat) as t:
            t.ensure_sim()
            seen = observe(t)
            if seen.gpu is None:
                return {"figures": footprints_json(cat, ids), "expected_note": f"GPU unreadable: {seen.gpu_error}"}
            mcat = measured_catalog(t, seen)
            policy = policy_for(t)
            mode = Mode(name or "simulated", name or "simulated", services=tuple(ModeService(i) for i in ids))
            secs, steps, why = expected_switch(mcat, seen, mode, policy)
            alts = mode_alternatives(mcat, seen, add or ids, policy, exclude=name or "") if secs is None else []
            return {"catalog": mcat, "figures": footprints_json(mcat, ids), "from_mode": seen.record.mode,
                    "expected_s": None if secs is None else round(secs, 2), "expected_steps": steps,
                    "expected_note": why, "mode_alternatives": alts}
    except Exception as exc:  # noqa: BLE001 - an unreachable target: the declared figures stand
        return {"figures": footprints_json(cat, ids), "expected_note": f"target not observed: {exc}"}


def print_simulate_extras(con: Any, live: dict[str, Any]) -> None:
    figs = live.get("figures") or []
    measured = [f"{f['id']} {f['vram_mb']} MB measured (declared {f['declared_vram_mb']})" for f in figs if f["vram_source"] == "measured"]
    con.print("figures: " + ("; ".join(measured) + "; others declared" if measured else "all declared"))
    if live.get("expected_s") is not None:
        con.print(f"expected switch time from now ({live.get('from_mode') or 'no mode'}): {live['expected_s']:.1f} s "
                  f"({live['expected_steps']} steps)")
    elif live.get("expected_note"):
        con.print(f"expected switch time: - ({live['expected_note']})")
    for a in live.get("mode_alternatives") or []:
        con.print(f"  fits  switch to mode {a['mode']} instead: expected {a['expected_s']:.1f} s ({a['steps']} steps)")


# -- model.info: the estimate next to what services of that model were measured holding ----------

def serves_model(p: Preset, model: str) -> bool:
    """Does ``p`` run ``model`` (a hub id, a directory or a file, as model.info was given it)?"""
    import os

    want = {model.rstrip("/"), os.path.abspath(os.path.expanduser(model)).rstrip("/")}
    have = {p.model_id, p.model_path.rstrip("/"), str(p.unit_vars.get("model", "")).rstrip("/")} - {""}
    if p.model_path:
        have.add(os.path.abspath(os.path.expanduser(p.model_path)).rstrip("/"))
    return bool(want & have)


def learned_for_model(target: Target, model: str) -> list[dict[str, Any]]:
    """Each service of ``model`` with a figure measured on ``target`` (with its current preset and unit)."""
    cat = target.catalog
    ids = [sid for sid, p in cat.presets.items() if serves_model(p, model)]
    if not ids:
        return []
    fp = read_store(target)
    have = [sid for sid in ids if sid in fp.services()]
    ds = digests(target, have) if have else {}
    out = []
    for sid in have:
        f = fp.figure(sid, "awake", ds.get(sid, ""))
        if f is not None:
            p = cat.presets[sid]
            out.append({"service": sid, "measured_mb": f.mb, "gpu_mb": {str(g): mb for g, mb in sorted(f.gpu_mb.items())},
                        "runs": f.samples, "declared_mb": p.vram_mb, "context_size": p.context_size})
    return out
