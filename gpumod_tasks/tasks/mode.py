"""Modes: list, show, simulate, switch, status, verify, history."""

from __future__ import annotations

import json

from invoke import Collection, Exit, task


@task(help={"json": "Print JSON instead of a table."})
def list_(c, json_=False):
    """List modes with their total VRAM."""
    from ..runtime import catalog
    from ..ui import make_console, modes_table

    cat = catalog()
    if json_:
        print(json.dumps([{"id": m.id, "name": m.name, "services": list(m.service_ids), "total_vram_mb": cat.mode_vram(m)}
                          for m in cat.modes.values()], indent=1))
        return
    make_console().print(modes_table(cat))


@task(help={"name": "Mode id.", "json": "Print JSON."})
def show(c, name, json_=False):
    """Show one mode: its services and their VRAM."""
    from ..fit import simulate as fit
    from ..runtime import catalog
    from ..ui import fit_report, make_console

    cat = catalog()
    m = cat.mode(name)
    presets = [cat.presets[s] for s in m.service_ids]
    if json_:
        print(json.dumps({"id": m.id, "name": m.name, "description": m.description, "file": m.file,
                          "services": [{"id": s.id, "sleep_on_idle": s.sleep_on_idle, "vram_mb": cat.presets[s.id].vram_mb} for s in m.services],
                          "total_vram_mb": cat.mode_vram(m)}, indent=1))
        return
    con = make_console()
    con.print(f"[bold]{m.name}[/bold] ({m.id}) — {m.description}")
    fit_report(con, fit(cat, presets, _gpu_mb(c), 0), f"mode {m.id}")


def _gpu_mb(c) -> int:
    from ..runtime import host_specs

    spec = host_specs(c)[0]
    return spec.gpu_total_mb or 24564


@task(iterable=["add"], help={
    "name": "Mode to simulate (optional with --services).",
    "add": "Add a service to the mode (repeatable).",
    "services": "Comma-separated services to simulate instead of a mode.",
    "gpu-mb": "GPU size in MB (default: the target host's GPU, else the RTX 4090 profile, 24564).",
    "reserve-mb": "MB kept free (default: the host's reserve_mb).",
    "json": "Print JSON.",
})
def simulate(c, name=None, add=None, services=None, gpu_mb=0, reserve_mb=-1, json_=False):
    """Check whether a mode (or a set of services) fits in VRAM, with alternatives when it does not.

    Simulation never starts or stops anything: it reads only the catalog and the inventory.
    """
    from ..fit import simulate as fit
    from ..runtime import catalog, host_specs
    from ..state import History
    from ..paths import controller_dir
    from ..ui import fit_report, make_console

    cat = catalog()
    ids: list[str] = []
    if name:
        ids += list(cat.mode(name).service_ids)
    if services:
        ids += [s.strip() for s in services.split(",") if s.strip()]
    ids += list(add or [])
    if not name and not ids:
        raise Exit("give --name MODE and/or --services a,b,c", code=2)
    seen: list[str] = []
    for i in ids:
        cat.preset(i)
        if i not in seen:
            seen.append(i)
    spec = host_specs(c)[0]
    total = gpu_mb or spec.gpu_total_mb or 24564
    reserve = spec.reserve_mb if reserve_mb < 0 else reserve_mb
    result = fit(cat, [cat.presets[i] for i in seen], total, reserve)
    try:
        h = History(f"{controller_dir()}/history.sqlite")
        h.add_simulation(name, seen, result.total_mb, total, result.fits)
        h.close()
    except Exception:  # noqa: BLE001 - history is advisory
        pass
    if json_:
        print(json.dumps({"mode": name, "services": seen, **result.as_dict()}, indent=1))
    else:
        fit_report(make_console(), result, f"simulate {name or ''} {'+ ' + ', '.join(add) if add else ''}".strip())
    if not result.fits:
        raise Exit(code=1)


@task(help={
    "name": "Mode to switch to.",
    "dry-run": "Print the plan (what would stop, sleep, wake, start) and change nothing.",
    "json": "Print the result as JSON (progress goes to stderr).",
    "no-wait": "Fail at once if another switch holds the host lock instead of waiting.",
    "no-quiesce": "Skip the quiesce pause after a heavy stop.",
    "rollback": "If the switch fails, switch back to the previous mode.",
})
def switch(c, name, dry_run=False, json_=False, no_wait=False, no_quiesce=False, rollback=False):
    """Switch the GPU to a mode: stop/sleep what leaves, verify VRAM is released, wake/start what arrives.

    Plans against what really runs (drift recovery: a target service found stopped is re-launched),
    refuses a mode that does not fit, and takes a host-level lock so switches never interleave.
    `inv mode.switch --name blank` always works and frees all VRAM.
    """
    from ..runtime import for_each_host
    from ..switch import switch as do_switch
    from ..ui import SwitchProgress, print_plan, print_summary

    def run(t, con):
        if dry_run:
            out = do_switch(t, name, dry_run=True)
            if json_:
                print(json.dumps({"mode": name, "dry_run": True, "steps": [s.describe() for s in out.plan.steps],
                                  "kept": list(out.plan.keep), "projected_mb": out.plan.projected_mb,
                                  "budget_mb": out.plan.budget_mb, "notes": list(out.plan.notes)}, indent=1))
            else:
                print_plan(con, out.plan)
            return f"dry run: {len(out.plan.steps)} steps"
        with SwitchProgress(con, enabled=True) as prog:
            out = do_switch(t, name, wait_lock=not no_wait, quiesce=not no_quiesce, rollback=rollback,
                            on_event=prog.event, on_wait=lambda msg: con.print(f"[yellow]{msg}[/yellow]"))
        if json_:
            # commands sent to the host during this run (observe, lock, steps): what a switch costs over SSH
            print(json.dumps({**out.report.as_dict(), "round_trips": t.host.round_trips}, indent=1))
        elif out.plan.converged:
            con.print(f"[green]already in mode {name}[/green]: nothing to do (kept: {', '.join(out.plan.keep) or '-'})")
        else:
            print_summary(con, out.report)
        return f"{name} in {out.report.duration_s:.2f}s"

    for_each_host(c, run, as_json=json_)


@task(help={"json": "Print JSON."})
def status(c, json_=False):
    """Show the current mode: name, its services, total VRAM and each service's state."""
    from ..status import mode_status

    mode_status(c, json_)


@task(help={"name": "Mode to verify (default: the recorded current mode).", "json": "Print JSON."})
def verify(c, name=None, json_=False):
    """Exit 0 only when every service of the mode is running and healthy."""
    from ..status import verify as do_verify

    do_verify(c, name, json_)


@task(help={"limit": "How many entries, newest first (default 20).", "json": "Print JSON."})
def history(c, limit=20, json_=False):
    """Past switches and service operations: when, what, per-step timings, outcome.

    Read from the controller's history store (history.sqlite in its state dir). Without -H every
    host's entries are shown; with -H only those hosts'.
    """
    from ..history import load, table
    from ..runtime import cli_settings, host_specs
    from ..ui import make_console

    if int(limit) < 1:
        raise Exit(f"--limit must be at least 1, not {limit}", code=2)
    hosts = [s.name for s in host_specs(c)] if cli_settings(c)["hosts"] else [None]
    rows = sorted((r for h in hosts for r in load(h, int(limit))), key=lambda r: -r["id"])[: int(limit)]
    if json_:
        print(json.dumps(rows, indent=1))
        return
    con = make_console()
    if not rows:
        con.print("no switches or service operations recorded yet")
        return
    con.print(table(rows))


list_.__name__ = "list"
ns = Collection("mode")
ns.add_task(list_, name="list")
for t in (show, simulate, switch, status, verify):
    ns.add_task(t)
ns.add_task(history)
