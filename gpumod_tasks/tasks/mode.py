"""Modes: list, show, simulate, switch, status, verify, history."""

from __future__ import annotations

import json

from invoke import Collection, Exit, task


@task(help={"json": "Print JSON instead of a table."})
def list_(c, json_=False):
    """List modes with their total VRAM; the target's current (recorded) mode is marked."""
    from ..cli_context import catalog, for_each_host
    from ..state import read_mode
    from ..ui import modes_table, print_json

    catalog()  # an invalid catalog is reported before any host is contacted

    def run(t, con):
        from ..learn import catalog_from_store, declared_mb, read_store

        cat = catalog_from_store(t, read_store(t))  # totals with the figures learned on this target
        current = read_mode(t.host, t.state_dir).mode
        measured = sorted(p.id for p in cat.presets.values() if p.vram_source == "measured")
        if json_:
            print_json([{"id": m.id, "name": m.name, "services": list(m.service_ids), "total_vram_mb": cat.mode_vram(m),
                         "declared_total_vram_mb": sum(declared_mb(cat.presets[s]) for s in m.service_ids),
                         "measured": [s for s in m.service_ids if s in measured],
                         "current": m.id == current} for m in cat.modes.values()])
        else:
            con.print(modes_table(cat, current))
            con.print(f"totals: measured figures for {', '.join(measured)}, declared for the rest" if measured
                      else "totals: declared figures (nothing measured on this target yet)")
            if current and current not in cat.modes:
                con.print(f"[yellow]note:[/yellow] the recorded mode {current!r} is not in the catalog any more")
        return f"current: {current or '-'}"

    for_each_host(c, run, as_json=json_, header=False)


@task(help={"name": "Mode id.", "json": "Print JSON."})
def show(c, name, json_=False):
    """Show one mode: its services and their VRAM."""
    from ..cli_context import catalog, host_specs
    from ..fit import simulate as fit
    from ..gpu_use import fit_per_gpu
    from ..ui import fit_report, make_console

    cat = catalog(host_specs(c)[0])  # the catalog of the host it would run on (-H)
    m = cat.mode(name)
    presets = [cat.presets[s] for s in m.service_ids]
    if json_:
        print(json.dumps({"id": m.id, "name": m.name, "description": m.description, "file": m.file,
                          "services": [{"id": s.id, "sleep_on_idle": s.sleep_on_idle, "vram_mb": cat.presets[s.id].vram_mb} for s in m.services],
                          "total_vram_mb": cat.mode_vram(m)}, indent=1))
        return
    con = make_console()
    con.print(f"[bold]{m.name}[/bold] ({m.id}) — {m.description}")
    r = fit(cat, presets, _gpu_mb(c), 0)
    fit_report(con, r, f"mode {m.id}", per_gpu=fit_per_gpu(r, cat.presets))


def _gpu_mb(c) -> int:
    from ..cli_context import host_specs

    spec = host_specs(c)[0]
    return spec.gpu_total_mb or 24564


@task(iterable=["add"], help={
    "name": "Mode to simulate (optional with --services).",
    "add": "Add a service to the mode (repeatable).",
    "services": "Comma-separated services to simulate instead of a mode.",
    "gpu-mb": "GPU size in MB, a positive whole number (default: the target host's GPU, else the RTX 4090 profile, 24564).",
    "reserve-mb": "MB kept free, 0 or more and less than the GPU (default: the host's reserve_mb).",
    "json": "Print JSON.",
})
def simulate(c, name=None, add=None, services=None, gpu_mb=None, reserve_mb=None, json_=False):
    """Check whether a mode (or a set of services) fits in VRAM, with alternatives when it does not.

    Simulation never starts or stops anything. It plans with the figures measured on the target
    (where there are some; each figure says measured or declared) and prints the expected switch
    time from the target's current state; an unreachable target leaves the declared figures.
    """
    from ..cli_context import catalog, host_specs
    from ..fit import simulate as fit
    from ..footprint_view import print_simulate_extras, simulate_on_target
    from ..gpu_use import fit_per_gpu, fit_placement, simulate_on_gpus
    from ..paths import controller_dir
    from ..state import History
    from ..ui import fit_report, make_console

    spec = host_specs(c)[0]
    cat = catalog(spec)  # the target's own catalog (an inventory host may name one)
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
    total = _megabytes("--gpu-mb", gpu_mb, minimum=1) if gpu_mb is not None else spec.gpu_total_mb or 24564
    reserve = _megabytes("--reserve-mb", reserve_mb, minimum=0) if reserve_mb is not None else spec.reserve_mb
    if reserve >= total:
        raise Exit(f"error: the reserve ({reserve} MB) must be less than the GPU size ({total} MB)", code=2)
    live = simulate_on_target(c, spec, cat, name, seen, add)  # measured figures and the expected switch time
    if live.get("catalog") is not None:
        cat = live.pop("catalog")
    result = fit(cat, [cat.presets[i] for i in seen], total, reserve)
    try:
        h = History(f"{controller_dir()}/history.sqlite")
        h.add_simulation(name, seen, result.total_mb, total, result.fits)
        h.close()
    except Exception:  # noqa: BLE001 - history is advisory
        pass
    # several GPUs declared (and no --gpu-mb): the planner's placement and per-GPU fit decide
    on_gpus = simulate_on_gpus(cat, [cat.presets[i] for i in seen], spec, reserve) if gpu_mb is None else None
    per_gpu = list(on_gpus.gpus) if on_gpus is not None else fit_per_gpu(result, cat.presets)
    fits = on_gpus.fits if on_gpus is not None else result.fits
    if json_:
        doc = {"mode": name, "services": seen, **result.as_dict()}
        if on_gpus is not None:
            doc.update(on_gpus.as_dict())
        elif per_gpu or "gpus" not in doc:  # per GPU: the GPU's arithmetic and each placed service's share there
            doc.update(placement={sid: list(ix) for sid, ix in fit_placement(result)}, gpus=[g.as_dict() for g in per_gpu])
        print(json.dumps({**doc, **live}, indent=1))
    else:
        con = make_console()
        fit_report(con, result, f"simulate {name or ''} {'+ ' + ', '.join(add) if add else ''}".strip(),
                   per_gpu=per_gpu, on_gpus=on_gpus)
        print_simulate_extras(con, live)
    if not fits:
        raise Exit(code=1)


def _megabytes(flag: str, value: str, minimum: int) -> int:
    try:
        n = int(value)
    except ValueError:
        n = None
    if n is None or n < minimum:
        want = "a positive whole number of MB" if minimum > 0 else "a whole number of MB, 0 or more"
        raise Exit(f"error: {flag} must be {want}, not {value!r}", code=2)
    return n


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
    from ..cli_context import for_each_host
    from ..errors import GpumodError
    from ..switch import switch as do_switch
    from ..ui import SwitchProgress, print_json, print_plan, print_summary

    def run(t, con):
        if not json_:
            return attempt(t, con)
        try:
            return attempt(t, con)
        except GpumodError as exc:  # scripts get the refusal or failure on stdout; the exit code stays the error's
            print_json(_switch_error(t, name, exc))
            raise

    def attempt(t, con):
        if dry_run:
            out = do_switch(t, name, dry_run=True)
            if json_:
                print_json({"ok": True, **out.plan.as_dict(), "dry_run": True})
            else:
                print_plan(con, out.plan)
            return f"dry run: {len(out.plan.steps)} steps"
        with SwitchProgress(con, enabled=True) as prog:
            out = do_switch(t, name, wait_lock=not no_wait, quiesce=not no_quiesce, rollback=rollback,
                            on_event=prog.event, on_wait=lambda msg: con.print(f"[yellow]{msg}[/yellow]"))
        assert out.report is not None  # a real run always reports
        if json_:
            # commands sent to the host during this run (observe, lock, steps): what a switch costs over SSH
            print_json({**out.report.as_dict(), "round_trips": t.host.round_trips})
        elif out.plan.converged:
            con.print(f"[green]already in mode {name}[/green]: nothing to do (kept: {', '.join(out.plan.keep) or '-'})")
        else:
            print_summary(con, out.report)
        return f"{name} in {out.report.duration_s:.2f}s"

    for_each_host(c, run, as_json=json_)


def _switch_error(t, name, exc) -> dict:
    """``mode.switch --json`` when the switch is refused (nothing changed) or fails (its report, and the state it left)."""
    from ..errors import GpumodError, SwitchFailed

    payload = dict(exc.payload) if isinstance(exc, SwitchFailed) else {"mode": name}
    if isinstance(exc, SwitchFailed):
        state = list(exc.state_lines)
    else:  # refused before anything changed: what runs on the host as it stands
        from ..observe import observe
        from ..observed import describe_state

        try:
            state = ["now on the GPU host:"] + ["  " + ln for ln in describe_state(observe(t))]
        except GpumodError as obs_exc:
            state = [f"state of the GPU host unknown: cannot observe it ({obs_exc})"]
    return {**payload, "ok": False, "host": t.spec.name, "error": str(exc), "kind": type(exc).__name__,
            "details": exc.details(), "exit_code": exc.exit_code, "state": state, "round_trips": t.host.round_trips}


@task(help={"json": "Print JSON."})
def status(c, json_=False):
    """Show the current mode: name, its services, total VRAM and each service's state."""
    from .views import mode_status

    mode_status(c, json_)


@task(help={"name": "Mode to verify (default: the recorded current mode).", "json": "Print JSON."})
def verify(c, name=None, json_=False):
    """Exit 0 only when every service of the mode is running and healthy."""
    from .views import verify as do_verify

    do_verify(c, name, json_)


@task(help={"limit": "How many entries, newest first (default 20).", "json": "Print JSON."})
def history(c, limit=20, json_=False):
    """Past switches and service operations: when, what, per-step timings, outcome.

    Read from the controller's history store (history.sqlite in its state dir). Without -H every
    host's entries are shown; with -H only those hosts'.
    """
    from ..cli_context import cli_settings, host_specs
    from ..history import load, table
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
