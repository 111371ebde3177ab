"""State: the current mode lives on the target (so two controllers agree); the history of
switches and simulations lives in SQLite on the controller.

The recorded mode is advisory: the switch engine plans against what really runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the planner reads ModeRecord: importing this module loads no host code or sqlite
    from .host.base import Host


@dataclass(frozen=True)
class ModeRecord:
    mode: str | None
    since: float = 0.0
    sleep_levels: dict[str, int] = field(default_factory=dict)  # service -> level it was put to sleep at
    last_switch: dict[str, Any] = field(default_factory=dict)
    # set by a run that failed or was interrupted (cleared by the next one that succeeds):
    # {"operation", "step", "step_index", "error", "at", "state": [lines of what runs]}
    failure: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return bool(self.failure)

    def failure_line(self) -> str:
        """One line for status views: what failed, where, and what runs now."""
        f = self.failure
        if not f:
            return ""
        step = f" at step {f.get('step_index')} '{f.get('step')}'" if f.get("step") else ""
        state = "; ".join(f.get("state") or [])
        return f"{f.get('operation', 'a run')} failed{step}: {f.get('error', '')}" + (f"; now {state}" if state else "")


def mode_file(state_dir: str) -> str:
    return f"{state_dir}/mode.json"


def parse_mode_record(text: str | None) -> ModeRecord:
    if not text:
        return ModeRecord(None)
    try:
        d = json.loads(text)
    except json.JSONDecodeError:
        return ModeRecord(None)
    return ModeRecord(
        mode=d.get("mode"),
        since=float(d.get("since", 0)),
        sleep_levels={str(k): int(v) for k, v in (d.get("sleep_levels") or {}).items()},
        last_switch=d.get("last_switch") or {},
        failure=d.get("failure") or {},
    )


def read_mode(host: Host, state_dir: str) -> ModeRecord:
    return parse_mode_record(host.read_file(mode_file(state_dir)))


def write_mode(host: Host, state_dir: str, record: ModeRecord) -> None:
    data: dict[str, Any] = {"mode": record.mode, "since": record.since, "sleep_levels": record.sleep_levels,
                            "last_switch": record.last_switch}
    if record.failure:
        data["failure"] = record.failure
    host.write_file(mode_file(state_dir), json.dumps(data, indent=1, sort_keys=True) + "\n")


class History:
    """Switch and simulation history in a SQLite file."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS switches (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        host TEXT NOT NULL, started REAL NOT NULL, duration_s REAL NOT NULL,
        from_mode TEXT, to_mode TEXT NOT NULL, ok INTEGER NOT NULL,
        steps TEXT NOT NULL, error TEXT
    );
    CREATE TABLE IF NOT EXISTS simulations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL, mode TEXT, services TEXT NOT NULL, total_mb INTEGER NOT NULL,
        gpu_mb INTEGER NOT NULL, fits INTEGER NOT NULL
    );
    """

    def __init__(self, path: str):
        import sqlite3

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=10)
        self.db.executescript(self.SCHEMA)

    def add_switch(self, host: str, started: float, duration_s: float, from_mode: str | None, to_mode: str, ok: bool,
                   steps: list[dict[str, Any]], error: str = "") -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO switches (host, started, duration_s, from_mode, to_mode, ok, steps, error) VALUES (?,?,?,?,?,?,?,?)",
                (host, started, duration_s, from_mode, to_mode, int(ok), json.dumps(steps), error),
            )

    def add_simulation(self, mode: str | None, services: list[str], total_mb: int, gpu_mb: int, fits: bool) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO simulations (at, mode, services, total_mb, gpu_mb, fits) VALUES (?,?,?,?,?,?)",
                (time.time(), mode, json.dumps(services), total_mb, gpu_mb, int(fits)),
            )

    def switches(self, host: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        q = "SELECT host, started, duration_s, from_mode, to_mode, ok, steps, error FROM switches"
        args: tuple[Any, ...] = ()
        if host:
            q += " WHERE host = ?"
            args = (host,)
        q += " ORDER BY id DESC LIMIT ?"
        rows = self.db.execute(q, (*args, limit)).fetchall()
        keys = ("host", "started", "duration_s", "from_mode", "to_mode", "ok", "steps", "error")
        out = []
        for r in rows:
            d = dict(zip(keys, r))
            d["steps"] = json.loads(d["steps"])
            d["ok"] = bool(d["ok"])
            out.append(d)
        return out

    def close(self) -> None:
        self.db.close()
