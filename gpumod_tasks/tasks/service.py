"""Services: list, show, start, stop, sleep, wake, status, logs."""

from __future__ import annotations

from invoke import Collection, Exit, task


@task(help={"json": "Print JSON."})
def list_(c, json_=False):
    """List every service in the catalog."""
    from ..cli_context import catalog, host_specs
    from ..ui import make_console, presets_table, print_json

    cat = catalog(host_specs(c)[0])
    if json_:
        print_json([{"id": p.id, "name": p.name, "driver": p.driver.value, "port": p.port, "vram_mb": p.vram_mb,
                     "sleep_mode": p.sleep_mode.value, "category": p.category} for p in cat.presets.values()])
        return
    make_console().print(presets_table(list(cat.presets.values())))


@task(help={"service-id": "Service (preset) id.", "json": "Print JSON."})
def show(c, service_id, json_=False):
    """Show one preset as gpumod reads it."""
    import dataclasses

    from ..cli_context import catalog, host_specs
    from ..envfile import masked_preset

    p = catalog(host_specs(c)[0]).preset(service_id)
    d = masked_preset(dataclasses.asdict(p))  # secret-looking env values are masked
    d["driver"], d["sleep_mode"], d["unit"], d["sleep_residual_mb"] = p.driver.value, p.sleep_mode.value, p.unit, p.residual_mb
    for k in ("declared_vram_mb", "declared_sleep_vram_mb", "vram_source", "sleep_source", "residuals_mb", "learned_s", "measured_gpu_mb"):
        d.pop(k, None)  # the footprint below says them, per state and GPU
    fp = _footprint(c, p)
    if json_:
        from ..ui import print_json

        print_json({**d, "footprint": fp}, default=str)
        return
    from ..ui import make_console

    con = make_console()
    for k, v in d.items():
        if v not in (None, "", (), {}, []):
            con.print(f"[bold]{k}[/bold]: {v}")
    _print_footprint(con, fp)


def _footprint(c, p) -> dict:
    """Declared vs measured for every state and GPU, and the learned durations, from the target's
    store (the first -H host; the local one by default)."""
    from ..cli_context import host_specs, open_target
    from ..footprint_view import footprint_rows
    from ..learn import digests, read_store

    try:
        spec = host_specs(c)[0]
        with open_target(c, spec) as t:
            fp = read_store(t)
            digest = digests(t, [p.id]).get(p.id, "")
            return {"host": spec.name, "digest": digest, "rows": footprint_rows(p, fp, digest),
                    "durations_s": {k: fp.seconds(p.id, k, digest) for k in sorted(fp.durations.get(p.id, {}))}}
    except Exception as exc:  # noqa: BLE001 - the preset is shown all the same
        return {"error": f"footprints not read: {exc}"}


def _print_footprint(con, fp: dict) -> None:
    from rich.table import Table

    if fp.get("error"):
        con.print(f"[yellow]{fp['error']}[/yellow]")
        return
    t = Table(title=f"footprint on {fp['host']} (declared vs measured, max of the last 5 runs with this preset and unit)",
              title_justify="left")
    for col in ("state", "GPU", "declared MB", "measured MB", "runs", "older runs"):
        t.add_column(col, justify="left" if col == "state" else "right")
    for r in fp["rows"]:
        t.add_row(r["state"], str(r["gpu"]), "-" if r["declared_mb"] is None else str(r["declared_mb"]),
                  "-" if r["measured_mb"] is None else str(r["measured_mb"]), str(r["samples"]),
                  str(r["stale_samples"]) if r["stale_samples"] else "")
    con.print(t)
    if fp["durations_s"]:
        con.print("learned durations: " + ", ".join(f"{k} {v:.2f}s" for k, v in fp["durations_s"].items() if v is not None))


def _action(c, action, service_id, dry_run=False, **kw):
    from ..cli_context import for_each_host
    from ..services import service_action

    def run(t, con):
        if dry_run:
            from ..pipeline import prepare
            from ..plan import ServiceOp
            from ..ui import print_plan

            plan, _ = prepare(t, ServiceOp(action, service_id, kw.get("level"), kw.get("quiesce", True)))
            print_plan(con, plan)
            return f"dry run: {len(plan.steps)} steps"
        msg = service_action(t, action, service_id, **kw)
        con.print(f"[green]{msg}[/green]")
        return msg

    for_each_host(c, run)


DRY = "Print the plan (the same checks and steps as the real run) and change nothing."


@task(help={"service-id": "Service to start (or wake, if asleep).", "no-quiesce": "Start even during the quiesce pause after a heavy stop.",
            "dry-run": DRY})
def start(c, service_id, no_quiesce=False, dry_run=False):
    """Start one service (fit and RAM checks, dependencies first, then its health gate)."""
    _action(c, "start", service_id, dry_run, quiesce=not no_quiesce)


@task(help={"service-id": "Service to stop.", "dry-run": DRY})
def stop(c, service_id, dry_run=False):
    """Stop one service (what depends on it first)."""
    _action(c, "stop", service_id, dry_run)


@task(help={"service-id": "Service to restart (a fresh process; preflight and health gate as on start).", "dry-run": DRY})
def restart(c, service_id, dry_run=False):
    """Restart one service: stop it, then start it and wait for its health gate."""
    _action(c, "restart", service_id, dry_run)


SLEEP_LEVELS = (1, 2)  # vLLM's: 1 offloads the weights to host RAM, 2 discards them


def sleep_level(preset, level: str | None) -> int | None:
    """``--level`` checked against the service before anything is contacted (Exit 2 when it is wrong)."""
    if level is None:
        return None
    if preset.sleep_mode.value == "router":
        raise Exit(f"error: {preset.id} sleeps by being unloaded from its llama.cpp router, which has no levels; "
                   "leave out --level", code=2)
    try:
        n = int(level)
    except ValueError:
        n = None
    if n not in SLEEP_LEVELS:
        raise Exit(f"error: --level must be {' or '.join(map(str, SLEEP_LEVELS))} "
                   f"(1: weights offloaded to host RAM, 2: weights discarded), not {level!r}", code=2)
    return n


@task(help={"service-id": "Service to put to sleep.",
            "level": "vLLM sleep level, 1 or 2 (default: the preset's); a llama.cpp router service takes none.",
            "dry-run": DRY})
def sleep(c, service_id, level=None, dry_run=False):
    """Put one sleep-capable service to sleep (vLLM L1/L2, or unload from its llama.cpp router)."""
    from ..cli_context import catalog, host_specs

    _action(c, "sleep", service_id, dry_run, level=sleep_level(catalog(host_specs(c)[0]).preset(service_id), level))


@task(help={"service-id": "Service to wake.", "dry-run": DRY})
def wake(c, service_id, dry_run=False):
    """Wake one sleeping service (if it fits) and wait until it is healthy."""
    _action(c, "wake", service_id, dry_run)


@task(help={"service-id": "Service id.", "json": "Print JSON."})
def status(c, service_id, json_=False):
    """State of one service: unit, health, sleep, VRAM."""
    from ..cli_context import for_each_host
    from ..observe import observe
    from ..status import observed_dict
    from ..ui import print_json

    def run(t, con):
        t.catalog.preset(service_id)
        t.ensure_sim()
        seen = observe(t, [service_id])
        d = [s for s in observed_dict(t, seen)["services"] if s["id"] == service_id][0]
        if json_:
            print_json(d)
        else:
            con.print(" ".join(f"[bold]{k}[/bold]={v}" for k, v in d.items()))
        return d["state"]

    for_each_host(c, run, as_json=json_)


@task(help={"service-id": "Service id.", "lines": "How many lines (default 50)."})
def logs(c, service_id, lines=50):
    """Tail of a service's journal (or supervisor log)."""
    from ..cli_context import for_each_host

    def run(t, con):
        p = t.catalog.preset(service_id)
        print(t.manager.logs(p.unit, int(lines)), end="")
        return "ok"

    for_each_host(c, run)


ns = Collection("service")
ns.add_task(list_, name="list")
for t in (show, start, stop, restart, sleep, wake, status, logs):
    ns.add_task(t)
