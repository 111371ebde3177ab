"""`inv status --watch`: a live dashboard (rich Live) that re-observes the host about once a second.

Shows the GPU and a VRAM bar with a segment per service, the current mode, every service with its
state, port, VRAM (by pid), uptime, the last switch and its duration, and a switch in progress
(read from the host lock's holder). Works over -H like every task; Ctrl-C ends it cleanly."""

from __future__ import annotations

import time
from typing import Any

from .lock import describe_holder, held_lock_text
from .observe import Observed, observe
from .target import Target


def uptimes(seen: Observed, now_mono_s: float | None) -> dict[str, float]:
    """Pure: seconds each running service has been up, from systemd's start timestamps."""
    if now_mono_s is None:
        return {}
    return {sid: now_mono_s - o.unit.started_mono_us / 1e6 for sid, o in seen.services.items()
            if o.unit.is_running and o.unit.started_mono_us}


def render(t: Target, seen: Observed, now_mono_s: float | None, lock_text: str | None, tick: int) -> Any:
    from rich.console import Group
    from rich.markup import escape
    from rich.text import Text

    from .ui import gpu_renderables, human_duration, status_table

    rec = seen.record
    parts: list[Any] = [Text.from_markup(f"[dim]{t.header()} · refreshed {time.strftime('%H:%M:%S')}"
                                         f" · observed in {seen.took_s * 1000:.0f} ms · Ctrl-C to quit[/dim]")]
    parts += gpu_renderables(seen)
    last = rec.last_switch
    line = (f"mode: [bold red]FAILED[/bold red] {escape(rec.failure_line())}" if rec.failed
            else f"mode: [bold]{rec.mode or '(none recorded)'}[/bold]")
    if rec.since:
        line += f" for {human_duration(time.time() - rec.since)}"
    if last:
        line += f"; last switch {last.get('from') or '-'} -> {last.get('to')} took {float(last.get('duration_s', 0)):.2f}s"
    parts.append(Text.from_markup(line))
    if lock_text and lock_text.strip():
        parts.append(Text.from_markup(f"[yellow]switching: {describe_holder(lock_text.strip())}[/yellow]"))
    parts.append(status_table(t.catalog, seen, uptimes(seen, now_mono_s)))
    return Group(*parts)


def watch(t: Target, con: Any, interval: float = 1.0, iterations: int = 0) -> None:
    from rich.live import Live

    t.ensure_sim()
    uptime_file = f"{t.spec.procfs.rstrip('/')}/uptime"
    tick = 0
    with Live(console=con, auto_refresh=False, screen=False, transient=False) as live:
        try:
            while True:
                t0 = time.monotonic()
                seen = observe(t)
                up = t.host.read_file(uptime_file)
                now_mono = float(up.split()[0]) if up and up.split() else None
                lock_text = held_lock_text(t.host, t.state_dir)
                live.update(render(t, seen, now_mono, lock_text, tick), refresh=True)
                tick += 1
                if iterations and tick >= iterations:
                    break
                time.sleep(max(0.05, interval - (time.monotonic() - t0)))
        except KeyboardInterrupt:
            pass
