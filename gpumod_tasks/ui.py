"""Rendering with rich: tables, the VRAM bar, switch progress and summaries, red errors."""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from .catalog.model import Catalog, Preset
    from .errors import GpumodError
    from .execute import SwitchReport
    from .fit import FitResult
    from .gpu_use import GpusFit, PlannedGpu
    from .observe import Observed
    from .plan import Plan, Step

# An id column on a narrow terminal: never cut to "vllm-embed…" (two ids would look the same); the
# other columns give way first, and an id that still does not fit folds onto a second line whole.
ID_COLUMN: dict[str, Any] = {"overflow": "fold", "no_wrap": True}

COLORS = ["cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta", "bright_green", "bright_yellow"]
STATE_STYLE = {"running": "green", "sleeping": "cyan", "starting": "yellow", "unhealthy": "red", "failed": "bold red", "stopped": "dim"}


# Output that is not a terminal (a pipe, a file, a test's buffer) is never cut or wrapped at a
# width: tables take their natural width and long lines stay whole, so `grep`, `cut` and `patch`
# see what was printed.  A terminal keeps its own width.
PIPE_WIDTH = 1 << 15
RULE_WIDTH = 100  # a rule's width where there is no terminal to span


class GpumodConsole(Console):
    def rule(self, title: Any = "", *, characters: str = "─", style: Any = "rule.line", align: Any = "center") -> None:
        if self.is_terminal:
            super().rule(title, characters=characters, style=style, align=align)
            return
        from rich.rule import Rule

        self.print(Rule(title, characters=characters, style=style, align=align), width=RULE_WIDTH)


def make_console(file: IO[str] | None = None, stderr: bool = False) -> Console:
    """A console for a task's output. ``file``: a buffer whose text is later written to stdout (several
    hosts at once); it is laid out for stdout, as wide as the terminal there, unlimited if none."""
    if file is not None:
        width = Console().width if sys.stdout.isatty() else PIPE_WIDTH
        return GpumodConsole(file=file, force_terminal=False, width=width, highlight=False, soft_wrap=False)
    con = GpumodConsole(stderr=stderr, highlight=False)
    if not con.is_terminal:
        con = GpumodConsole(stderr=stderr, highlight=False, width=PIPE_WIDTH)
    return con


def print_json(data: Any, **kw: Any) -> None:
    """JSON for scripts on stdout: one document, ending with a newline, flushed."""
    import json

    sys.stdout.write(json.dumps(data, indent=1, **kw) + "\n")
    sys.stdout.flush()


def print_error(exc: GpumodError, console: Console | None = None) -> None:
    con = console or Console(stderr=True, highlight=False)
    # soft_wrap: an error line is never broken, so it can be grepped and copied whole
    con.print(Text(f"error: {exc}", style="bold red"), soft_wrap=True)
    for line in exc.details():
        con.print(Text(f"  {line}", style="red"), soft_wrap=True)


def vram_bar(segments: list[tuple[str, int]], total_mb: int, width: int = 60, used_mb: int | None = None) -> Text:
    """A colored bar with one segment per service; '.' is free VRAM."""
    text = Text("[")
    filled = 0
    for i, (name, mb) in enumerate(segments):
        if mb <= 0 or total_mb <= 0:
            continue
        n = max(1, round(mb / total_mb * width))
        n = min(n, width - filled)
        text.append("█" * n, style=COLORS[i % len(COLORS)])
        filled += n
    if used_mb is not None and total_mb > 0:
        other = max(0, round(used_mb / total_mb * width) - filled)
        other = min(other, width - filled)
        text.append("▒" * other, style="white")
        filled += other
    text.append("." * max(0, width - filled), style="dim")
    text.append("]")
    return text


def legend(segments: list[tuple[str, int]]) -> Text:
    t = Text()
    for i, (name, mb) in enumerate(segments):
        if mb <= 0:
            continue
        t.append("█ ", style=COLORS[i % len(COLORS)])
        t.append(f"{name} {mb} MB   ")
    return t


def ascii_bar(segments: list[tuple[str, int]], total_mb: int, width: int = 60) -> str:
    from .fit import vram_bar as plain

    return plain(segments, total_mb, width)


def fit_report(con: Console, fit: FitResult, title: str, per_gpu: list[PlannedGpu] | None = None,
               on_gpus: GpusFit | None = None) -> None:
    """``per_gpu``: each GPU after the planned placement (several GPUs): a bar per GPU instead of one.
    ``on_gpus``: the fit on the host's several GPUs, whose verdict (and refusal) is the one shown."""
    if on_gpus is not None:
        fit_on_gpus_headline(con, on_gpus)
    else:
        con.print(Text(fit.headline(), style="bold green" if fit.fits else "bold red"))
    t = Table(title=title, title_justify="left")
    for col in ("id", "name", "driver", "VRAM MB", "sleep"):
        t.add_column(col, justify="right" if col == "VRAM MB" else "left", **ID_COLUMN if col == "id" else {})
    for p in fit.services:
        t.add_row(p.id, p.name, p.driver.value, str(p.vram_mb), p.sleep_mode.value)
    t.add_row("", "[bold]total[/bold]", "", f"[bold]{fit.total_mb}[/bold]", "")
    con.print(t)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if per_gpu and len(per_gpu) > 1:
        planned_bars(con, per_gpu, [p.id for p in fit.services])
    else:
        segs = [(p.id, p.vram_mb) for p in fit.services]
        con.print(Text("VRAM ") + Text(ascii_bar(segs, fit.gpu_mb)) + Text(f" {fit.total_mb}/{fit.gpu_mb} MB"))
        con.print("     " + "  ".join(f"{letters[i % 26]}={p.id}" for i, p in enumerate(fit.services) if p.vram_mb > 0))
    if on_gpus is not None:
        for line in on_gpus.lines:
            con.print(Text(f"  {line}", style="red" if not on_gpus.fits else ""))
    elif not fit.fits:
        con.print(Text(f"Over by {fit.over_by_mb} MB. Alternatives:", style="red"))
        for a in fit.alternatives:
            mark = Text("  fits  ", style="green") if a.fits else Text("  no    ", style="red")
            con.print(mark + Text(a.description))
        if not fit.alternatives:
            con.print("  (none found in the catalog)")


def fit_on_gpus_headline(con: Console, f: GpusFit) -> None:
    used, total = sum(g.plan.projected_mb for g in f.gpus), sum(g.plan.total_mb for g in f.gpus)
    if f.fits:
        place = ", ".join(f"{sid} GPU{','.join(map(str, ix))}" for sid, ix in f.placement if ix) or "-"
        con.print(Text(f"Fits on {len(f.gpus)} GPUs: {used} / {total} MB (placed: {place})", style="bold green"))
    else:
        con.print(Text(f"Does not fit: {f.refusal}", style="bold red"))


def planned_bars(con: Console, per_gpu: list[PlannedGpu], order: list[str]) -> None:
    """A bar per GPU of a plan: what the placement puts there against its total (a service keeps
    its letter on every GPU), and the budget the plan may use of it."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    ids = list(order) + [sid for g in per_gpu for sid, _ in g.services if sid not in order]
    for g in per_gpu:
        mine = dict(g.services)
        segs = [(sid, mine.get(sid, 0)) for sid in ids]
        name = f" {g.plan.name}" if g.plan.name else ""
        con.print(Text(f"{g.label}{name}: {g.plan.projected_mb}/{g.plan.total_mb} MB (budget {g.plan.budget_mb} MB)"))
        con.print(Text(f"{g.label} ") + Text(ascii_bar(segs, g.plan.total_mb)))
        shown = "  ".join(f"{letters[i % 26]}={sid} {mine[sid]} MB" for i, sid in enumerate(ids) if mine.get(sid))
        con.print(" " * (len(g.label) + 1) + (shown or "(nothing placed)"))


def presets_table(presets: list[Preset], title: str = "services") -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("id", "name", "driver", "port", "VRAM MB", "sleep", "category"):
        t.add_column(col, justify="right" if col in ("port", "VRAM MB") else "left", **ID_COLUMN if col == "id" else {})
    for p in presets:
        t.add_row(p.id, p.name, p.driver.value, str(p.port), str(p.vram_mb), p.sleep_mode.value, p.category)
    return t


def modes_table(cat: Catalog, current: str | None = None) -> Table:
    t = Table(title="modes", title_justify="left")
    for col in ("current", "id", "name", "services", "Total VRAM MB"):
        t.add_column(col, justify="right" if col == "Total VRAM MB" else "center" if col == "current" else "left",
                     **ID_COLUMN if col == "id" else {})
    for m in cat.modes.values():
        t.add_row("*" if m.id == current else "", m.id, m.name, ", ".join(m.service_ids) or "-", str(cat.mode_vram(m)))
    return t


def plan_table(plan: Plan) -> Table:
    t = Table(title=f"plan: {plan.operation or 'switch to ' + plan.mode}", title_justify="left")
    t.add_column("#", justify="right")
    t.add_column("step")
    for i, s in enumerate(plan.steps, 1):
        t.add_row(str(i), s.describe())
    return t


def print_plan(con: Console, plan: Plan) -> None:
    if plan.converged:
        con.print(f"[green]nothing to do:[/green] {plan.nothing_to_do or f'mode {plan.mode} is already running as planned'} "
                  f"(kept: {', '.join(plan.keep) or '-'})")
    else:
        con.print(plan_table(plan))
    if len(plan.gpus) > 1:  # a box with several GPUs: each GPU's arithmetic, and who is where
        for line in gpu_lines(plan):
            con.print(line)
    else:
        con.print(f"projected VRAM {plan.projected_mb} MB of budget {plan.budget_mb} MB (GPU {plan.gpu_total_mb} MB)")
    for n in plan.notes:
        con.print(f"[yellow]note:[/yellow] {n}")


def placement_text(plan: Plan) -> str:
    """``emb GPU0, big GPU0+1`` (the services in the plan's placement)."""
    return ", ".join(f"{sid} GPU{'+'.join(map(str, ix))}" for sid, ix in plan.placement if ix) or "-"


def gpu_lines(plan: Plan) -> list[str]:
    """One line per GPU: its projection, budget and total, and the services placed on it."""
    out = []
    for g in plan.gpus:
        on = [sid for sid, ix in plan.placement if g.index in ix]
        out.append(f"GPU{g.index}{' ' + g.uuid if g.uuid else ''}: projected {g.projected_mb} MB of budget {g.budget_mb} MB "
                   f"(GPU {g.total_mb} MB): {', '.join(on) or '-'}")
    return out


def status_table(cat: Catalog, seen: Observed, uptimes: dict[str, float] | None = None) -> Table:
    from .gpu_use import gpus_label

    t = Table(title_justify="left")
    on_gpus = _service_gpus(seen)
    cols = ["service", "state", "port", "VRAM MB", *(["GPUs"] if on_gpus is not None else []), "driver",
            *(["uptime"] if uptimes is not None else []), "detail"]
    for col in cols:
        t.add_column(col, justify="right" if col in ("port", "VRAM MB", "uptime") else "left", **ID_COLUMN if col == "service" else {})
    for sid, o in seen.services.items():
        p = cat.presets[sid]
        state = o.state.value + (f" L{o.sleep_level}" if o.sleep_level else " (unloaded)" if o.sleep_level == 0 else "")
        detail = ""
        if o.probe and o.state.value in ("unhealthy", "starting"):
            detail = o.probe.detail[:50]
        if o.probe and o.probe.router_status:
            detail = f"router: {o.probe.router_status}"
        if o.foreign_listener:
            detail = "port answered by another process"
        if o.unit.main_pid:
            detail = (detail + f" pid {o.unit.main_pid}").strip()
        row: list[Any] = [sid, Text(state, style=STATE_STYLE.get(o.state.value, "")), str(p.port), str(o.vram_mb or "")]
        if on_gpus is not None:
            row.append(gpus_label(on_gpus.get(sid, ())) if sid in on_gpus else "")
        row.append(p.driver.value)
        if uptimes is not None:
            row.append(human_duration(uptimes[sid]) if sid in uptimes else "-")
        t.add_row(*row, detail)
    return t


def _service_gpus(seen: Observed) -> dict[str, tuple[int, ...]] | None:
    """Each service's GPUs when the box has several (None with one: the table keeps its columns)."""
    if seen.gpu is None or len(seen.gpu.gpus) < 2:
        return None
    from .gpu_use import gpu_uses, service_gpus

    return service_gpus(gpu_uses(seen))


def human_duration(s: float) -> str:
    s = int(max(0, s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def gpu_renderables(seen: Observed) -> list[Any]:
    if seen.gpu is None or not seen.gpu.gpus:
        return [Text.from_markup(f"[red]GPU unavailable:[/red] {seen.gpu_error}")]
    if len(seen.gpu.gpus) > 1:
        return gpus_renderables(seen)
    g = seen.gpu.primary
    segs = [(sid, o.vram_mb) for sid, o in seen.services.items() if o.vram_mb]
    out: list[Any] = [Text.from_markup(f"[bold]{g.name}[/bold]  {g.used_mb} / {g.total_mb} MB used, {g.free_mb} MB free  "
                                       f"[dim](backend: {seen.gpu.backend})[/dim]"),
                      vram_bar(segs, g.total_mb or 0, used_mb=g.used_mb)]
    if segs:
        out.append(legend(segs))
    if seen.unmapped_pids:
        out.append(Text.from_markup("[yellow]other GPU processes:[/yellow] "
                                    + ", ".join(f"pid {p}: {mb} MB" for p, mb in seen.unmapped_pids.items())))
    return out


def gpus_renderables(seen: Observed) -> list[Any]:
    """Several GPUs: a line for the box, then per GPU its figures, its bar (a segment per service
    holding memory there, a service keeping its colour on every GPU) and what else runs on it."""
    from .gpu_use import gpu_uses

    uses = gpu_uses(seen)
    holders = [sid for sid in seen.services if any(u.services.get(sid) for u in uses)]
    used, total = sum(u.used_mb for u in uses), sum(u.total_mb for u in uses)
    backend = seen.gpu.backend if seen.gpu else ""
    out: list[Any] = [Text.from_markup(f"[bold]{len(uses)} GPUs[/bold]  {used} / {total} MB used, {total - used} MB free  "
                                       f"[dim](backend: {backend})[/dim]")]
    for u in uses:
        segs = [(sid, u.services.get(sid, 0)) for sid in holders]
        out.append(Text.from_markup(f"[bold]{u.label}[/bold] {escape(u.name)}  {u.used_mb} / {u.total_mb} MB used, "
                                    f"{u.free_mb} MB free"))
        out.append(vram_bar(segs, u.total_mb, used_mb=u.used_mb))
        if any(mb for _, mb in segs):
            out.append(legend(segs))
        if u.other:
            out.append(Text.from_markup(f"[yellow]{u.label} other GPU processes:[/yellow] "
                                        + ", ".join(f"pid {p}: {mb} MB" for p, mb in u.other.items())))
    return out


def gpu_used_text(seen: Observed) -> str:
    """``7500 / 24564 MB``; with several GPUs each one's: ``GPU0 7500 / 24564 MB, GPU1 2200 / 24564 MB``."""
    if seen.gpu is None or len(seen.gpu.gpus) < 2:
        return f"{seen.gpu_used_mb} / {seen.gpu_total_mb} MB"
    return ", ".join(f"GPU{g.index} {g.used_mb or 0} / {g.total_mb or 0} MB" for g in seen.gpu.gpus)


def gpu_panel(con: Console, cat: Catalog, seen: Observed) -> None:
    for r in gpu_renderables(seen):
        con.print(r)


class SwitchProgress:
    """A live line per step with elapsed time (rich Progress), then a summary block."""

    def __init__(self, con: Console, enabled: bool = True):
        self.con = con
        self.enabled = enabled
        self.progress: Any = None
        self.tasks: dict[int, Any] = {}
        self.t0 = time.perf_counter()

    def __enter__(self) -> SwitchProgress:
        return self

    def _start(self) -> None:
        # started with the first step: a switch refused before any step prints no empty progress block
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(finished_text="[green]✓[/green]"), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=self.con, transient=False)
        self.progress.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def event(self, phase: str, step: Step, detail: str) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            self._start()
        key = id(step)
        if phase == "start":
            self.tasks[key] = self.progress.add_task(step.describe(), total=1)
        elif phase == "done":
            self.progress.update(self.tasks[key], completed=1, description=f"{step.describe()} [dim]{detail}[/dim]")
        elif phase == "fail":
            self.progress.update(self.tasks[key], description=f"[red]✗ {step.describe()}: {detail}[/red]")
            self.progress.stop_task(self.tasks[key])


def print_summary(con: Console, report: SwitchReport) -> None:
    s = report.summary()
    con.print(f"[bold green]switched to {report.plan.mode}[/bold green] in {report.duration_s:.2f}s")
    for key in ("Stopped", "Slept", "Woken", "Started"):
        items = s[key]
        con.print(f"  {key + ':':9} " + (", ".join(f"{name} ({sec:.2f}s)" for name, sec in items) if items else "-"))
    if report.plan.keep:
        con.print(f"  {'Kept:':9} {', '.join(report.plan.keep)}")
    if len(report.plan.gpus) > 1:
        con.print(f"  {'Placed:':9} {placement_text(report.plan)}")
    if report.plan.restarted:
        con.print(f"  [yellow]Restarted (unit changed):[/yellow] {', '.join(report.plan.restarted)}")
    if report.plan.relaunched:
        con.print(f"  [yellow]Re-launched (drift recovery):[/yellow] {', '.join(report.plan.relaunched)}")


def eprint(msg: str) -> None:
    print(msg, file=sys.stderr)


def results_table(results: list[Any]) -> Table:
    """Per-host results of a multi-host run."""
    t = Table(title="hosts", title_justify="left")
    for col in ("host", "result", "seconds", "summary"):
        t.add_column(col, justify="right" if col == "seconds" else "left", **ID_COLUMN if col == "host" else {})
    for r in results:
        t.add_row(r.host, "[green]ok[/green]" if r.ok else "[red]FAILED[/red]", f"{r.seconds:.2f}", r.summary)
    return t
