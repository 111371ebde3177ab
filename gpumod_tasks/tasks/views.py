"""The bodies shared by the read tasks `status`, `gpu.status`, `mode.status` and `mode.verify`
(observe the -H hosts and print a view of each; `gpumod_tasks/status.py` builds the JSON view)."""

from __future__ import annotations

import json
import time
from typing import Any

from invoke import Context, Exit
from rich.markup import escape

from ..cli_context import for_each_host
from ..footprint_view import figures_table, footprints_json
from ..learn import declared_mb, measured_catalog
from ..observe import observe
from ..status import observed_dict
from ..target import Target


def host_status(c: Context, as_json: bool) -> None:
    from ..ui import gpu_panel, gpu_used_text, status_table

    def run(t: Target, con: Any) -> str:
        t.ensure_sim()
        seen = observe(t)
        cat = measured_catalog(t, seen)
        if as_json:
            print(json.dumps({**observed_dict(t, seen), "footprints": footprints_json(cat)}, indent=1))
            return "ok"
        gpu_panel(con, t.catalog, seen)
        rec = seen.record
        last = rec.last_switch
        when = f", last switch {last.get('from') or '-'} -> {last.get('to')} took {last.get('duration_s', 0):.2f}s" if last else ""
        if rec.failed:
            con.print(f"mode: [bold red]FAILED[/bold red] — {escape(rec.failure_line())} "
                      f"(re-run a switch to converge; the last good mode was {rec.mode or '-'})")
        else:
            con.print(f"mode: [bold]{rec.mode or '(none recorded)'}[/bold]{when}")
        con.print(status_table(t.catalog, seen))
        con.print(figures_table(cat, list(seen.services)))
        return (f"FAILED: {rec.failure.get('operation')}" if rec.failed else f"mode {rec.mode}") + \
            f", {gpu_used_text(seen).replace(' / ', '/')}"

    for_each_host(c, run, as_json=as_json)


def mode_status(c: Context, as_json: bool) -> None:
    from rich.panel import Panel

    from ..ui import gpu_used_text, status_table

    def run(t: Target, con: Any) -> str:
        t.ensure_sim()
        seen = observe(t)
        rec = seen.record
        ids = [s for s in (t.catalog.modes[rec.mode].service_ids if rec.mode in t.catalog.modes else ())]
        cat = measured_catalog(t, seen)
        if as_json:
            d = observed_dict(t, seen)
            d["mode_services"] = ids
            d["mode_vram_mb"] = sum(cat.presets[s].vram_mb for s in ids)
            d["declared_mode_vram_mb"] = sum(declared_mb(cat.presets[s]) for s in ids)
            d["footprints"] = footprints_json(cat, ids)
            print(json.dumps(d, indent=1))
            return "ok"
        total = sum(cat.presets[s].vram_mb for s in ids)
        measured = [s for s in ids if cat.presets[s].vram_source == "measured"]
        name = t.catalog.modes[rec.mode].name if rec.mode in t.catalog.modes else "-"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.since)) if rec.since else "-"
        body = (f"mode [bold]{rec.mode or '(none)'}[/bold] ({name}) since {since}\n"
                f"services: {', '.join(ids) or '-'}\ntotal VRAM: {total} MB "
                f"({'measured: ' + ', '.join(measured) + '; others ' if measured else ''}declared); "
                f"GPU used now: {gpu_used_text(seen)}")
        if rec.failed:
            body = f"[bold red]FAILED[/bold red]: {escape(rec.failure_line())}\n" + body
        con.print(Panel(body, title="current mode", expand=False))
        con.print(status_table(t.catalog, seen))
        bad = list(seen.not_running(ids))
        if bad:
            con.print(f"[yellow]not running as the mode expects:[/yellow] {', '.join(bad)} (re-run mode.switch to converge)")
        return f"mode {rec.mode}"

    for_each_host(c, run, as_json=as_json)


def verify(c: Context, name: str | None, as_json: bool) -> None:
    def run(t: Target, con: Any) -> str:
        t.ensure_sim()
        seen = observe(t)
        mode_id = name or seen.record.mode
        if not mode_id:
            raise Exit("no mode recorded on this host; give --name", code=2)
        mode = t.catalog.mode(mode_id)
        bad = seen.not_running(mode.service_ids, [ms.id for ms in mode.services if ms.sleep_on_idle])
        if as_json:
            print(json.dumps({"mode": mode_id, "ok": not bad, "problems": bad}, indent=1))
        elif bad:
            for s, st in bad.items():
                con.print(f"[red]✗ {s}: {st}[/red]")
        else:
            con.print(f"[green]✓ mode {mode_id}: all {len(mode.service_ids)} services running and healthy[/green]")
        if bad:
            raise Exit(code=1)
        return "ok"

    for_each_host(c, run, as_json=as_json)
