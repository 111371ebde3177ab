"""Services: list, show, start, stop, sleep, wake, status, logs."""

from __future__ import annotations

import json

from invoke import Collection, task


@task(help={"json": "Print JSON."})
def list_(c, json_=False):
    """List every service in the catalog."""
    from ..runtime import catalog
    from ..ui import make_console, presets_table

    cat = catalog()
    if json_:
        print(json.dumps([{"id": p.id, "name": p.name, "driver": p.driver.value, "port": p.port, "vram_mb": p.vram_mb,
                           "sleep_mode": p.sleep_mode.value, "category": p.category} for p in cat.presets.values()], indent=1))
        return
    make_console().print(presets_table(list(cat.presets.values())))


@task(help={"service-id": "Service (preset) id.", "json": "Print JSON."})
def show(c, service_id, json_=False):
    """Show one preset as gpumod reads it."""
    import dataclasses

    from ..render import masked_preset
    from ..runtime import catalog

    p = catalog().preset(service_id)
    d = masked_preset(dataclasses.asdict(p))  # secret-looking env values are masked
    d["driver"], d["sleep_mode"], d["unit"], d["sleep_residual_mb"] = p.driver.value, p.sleep_mode.value, p.unit, p.residual_mb
    if json_:
        print(json.dumps(d, indent=1, default=str))
        return
    from ..ui import make_console

    con = make_console()
    for k, v in d.items():
        if v not in (None, "", (), {}, []):
            con.print(f"[bold]{k}[/bold]: {v}")


def _action(c, action, service_id, **kw):
    from ..runtime import for_each_host
    from ..services import service_action

    def run(t, con):
        msg = service_action(t, action, service_id, **kw)
        con.print(f"[green]{msg}[/green]")
        return msg

    for_each_host(c, run)


@task(help={"service-id": "Service to start (or wake, if asleep).", "no-quiesce": "Start even during the quiesce pause after a heavy stop."})
def start(c, service_id, no_quiesce=False):
    """Start one service (preflight, then wait for its health gate)."""
    _action(c, "start", service_id, quiesce=not no_quiesce)


@task(help={"service-id": "Service to stop."})
def stop(c, service_id):
    """Stop one service."""
    _action(c, "stop", service_id)


@task(help={"service-id": "Service to restart (a fresh process; preflight and health gate as on start)."})
def restart(c, service_id):
    """Restart one service: stop it, then start it and wait for its health gate."""
    _action(c, "restart", service_id)


@task(help={"service-id": "Service to put to sleep.", "level": "Sleep level (1 or 2; default: the preset's)."})
def sleep(c, service_id, level=None):
    """Put one sleep-capable service to sleep (vLLM L1/L2, or unload from its llama.cpp router)."""
    _action(c, "sleep", service_id, level=int(level) if level is not None else None)


@task(help={"service-id": "Service to wake."})
def wake(c, service_id):
    """Wake one sleeping service and wait until it is healthy."""
    _action(c, "wake", service_id)


@task(help={"service-id": "Service id.", "json": "Print JSON."})
def status(c, service_id, json_=False):
    """State of one service: unit, health, sleep, VRAM."""
    from ..observe import observe
    from ..runtime import for_each_host
    from ..status import observed_dict

    def run(t, con):
        t.catalog.preset(service_id)
        t.ensure_sim()
        seen = observe(t, [service_id])
        d = [s for s in observed_dict(t, seen)["services"] if s["id"] == service_id][0]
        if json_:
            print(json.dumps(d, indent=1))
        else:
            con.print(" ".join(f"[bold]{k}[/bold]={v}" for k, v in d.items()))
        return d["state"]

    for_each_host(c, run, as_json=json_)


@task(help={"service-id": "Service id.", "lines": "How many lines (default 50)."})
def logs(c, service_id, lines=50):
    """Tail of a service's journal (or supervisor log)."""
    from ..runtime import for_each_host

    def run(t, con):
        p = t.catalog.preset(service_id)
        print(t.manager.logs(p.unit, int(lines)), end="")
        return "ok"

    for_each_host(c, run)


ns = Collection("service")
ns.add_task(list_, name="list")
for t in (show, start, stop, restart, sleep, wake, status, logs):
    ns.add_task(t)
