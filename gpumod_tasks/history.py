"""The switch history as people read it: `inv mode.history`, the MCP tool and the web dashboard.

Rows come from ``state.History`` (SQLite in the controller's state dir). Recording a run is
here too: the one run path (``pipeline.run``) records every switch and service operation.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .paths import controller_dir
from .state import History

if TYPE_CHECKING:
    from rich.table import Table

    from .execute import SwitchReport
    from .target import Target


def history_file() -> str:
    return f"{controller_dir()}/history.sqlite"


def load(host: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Newest first, every kind, with a one-line ``title`` each."""
    h = History(history_file())
    try:
        rows = h.entries(host, limit)
    finally:
        h.close()
    for r in rows:
        r["title"] = title(r)
    return rows


def title(row: dict[str, Any]) -> str:
    if row.get("kind") == "service":
        return f"{row.get('action') or '?'} {row.get('service') or '?'}"
    return f"{row.get('from_mode') or '-'} -> {row.get('to_mode')}"


def record_run(t: Target, op: object, started: float, report: SwitchReport) -> None:
    """Add one run of the pipeline to the history (a switch, or a service operation); never fails
    the run over it."""
    from .plan import ServiceOp

    try:
        h = History(history_file())
        try:
            steps = [r.as_dict() for r in report.results]
            plan = report.plan
            if isinstance(op, ServiceOp):
                h.add_service(t.spec.name, started, report.duration_s, op.action, op.service, plan.previous_mode,
                              report.ok, steps, report.error)
            else:
                h.add_switch(t.spec.name, started, report.duration_s, plan.previous_mode, plan.mode or plan.operation,
                             report.ok, steps, report.error)
        finally:
            h.close()
    except Exception:  # history is advisory  # noqa: BLE001
        pass


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def table(rows: list[dict[str, Any]]) -> Table:
    from rich.table import Table
    from rich.text import Text

    # cells are Text, never markup: step descriptions carry brackets ("[L1 -> L2: ...]")
    t = Table(title="history (newest first)", show_lines=False)
    for col in ("when", "host", "kind", "what", "took", "outcome", "steps"):
        t.add_column(col, justify="right" if col == "took" else "left", overflow="fold", no_wrap=col in ("when", "took"))
    for r in rows:
        steps = "\n".join(f"{float(s.get('seconds', 0)):6.2f}s {s.get('step')}" + (" FAILED" if s.get("status") == "failed" else "")
                          for s in r["steps"])
        outcome = Text("ok", style="green") if r["ok"] else Text("failed", style="red") + Text(f": {r['error']}")
        t.add_row(*(Text(str(x)) for x in (when(r["started"]), r["host"], r["kind"], r.get("title") or title(r),
                                            f"{r['duration_s']:.2f}s")), outcome, Text(steps or "-"))
    return t
