"""State: the current mode lives on the target (so two controllers agree); the history of
switches, service operations and simulations lives in SQLite on the controller.

The recorded mode is advisory: the switch engine plans against what really runs.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .host.base import Host


@dataclass(frozen=True)
class ModeRecord:
    mode: str | None
    since: float = 0.0
    sleep_levels: dict[str, int] = field(default_factory=dict)  # service -> level it was put to sleep at
    last_switch: dict[str, Any] = field(default_factory=dict)


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
    )


def read_mode(host: Host, state_dir: str) -> ModeRecord:
    return parse_mode_record(host.read_file(mode_file(state_dir)))


def write_mode(host: Host, state_dir: str, record: ModeRecord) -> None:
    data = {"mode": record.mode, "since": record.since, "sleep_levels": record.sleep_levels, "last_switch": record.last_switch}
    host.write_file(mode_file(state_dir), json.dumps(data, indent=1, sort_keys=True) + "\n")


class History:
    """Switches, service operations and simulations in a SQLite file on the controller.

    A row of ``switches`` is one switch (``kind = 'switch'``: from_mode -> to_mode) or one service
    operation (``kind = 'service'``: ``action`` on ``service``, to_mode the mode it ran in), with
    its steps (``[{kind, step, status, seconds, detail}]``) and outcome.  Files written before
    service operations were recorded gain the new columns on open (their rows are switches).
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS switches (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        host TEXT NOT NULL, started REAL NOT NULL, duration_s REAL NOT NULL,
        from_mode TEXT, to_mode TEXT NOT NULL, ok INTEGER NOT NULL,
        steps TEXT NOT NULL, error TEXT,
        kind TEXT NOT NULL DEFAULT 'switch', action TEXT, service TEXT
    );
    CREATE TABLE IF NOT EXISTS simulations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL, mode TEXT, services TEXT NOT NULL, total_mb INTEGER NOT NULL,
        gpu_mb INTEGER NOT NULL, fits INTEGER NOT NULL
    );
    """
    # columns added after the first release: (name, declaration) for ALTER TABLE on older files
    MIGRATIONS = (("kind", "TEXT NOT NULL DEFAULT 'switch'"), ("action", "TEXT"), ("service", "TEXT"))
    KEYS = ("id", "kind", "host", "started", "duration_s", "from_mode", "to_mode", "action", "service", "ok", "steps", "error")

    def __init__(self, path: str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=10)
        with self.db:
            self.db.executescript(self.SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        have = {row[1] for row in self.db.execute("PRAGMA table_info(switches)")}
        for name, decl in self.MIGRATIONS:
            if name not in have:
                self.db.execute(f"ALTER TABLE switches ADD COLUMN {name} {decl}")

    def add_switch(self, host: str, started: float, duration_s: float, from_mode: str | None, to_mode: str, ok: bool,
                   steps: list[dict[str, Any]], error: str = "") -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO switches (kind, host, started, duration_s, from_mode, to_mode, ok, steps, error) "
                "VALUES ('switch',?,?,?,?,?,?,?,?)",
                (host, started, duration_s, from_mode, to_mode, int(ok), json.dumps(steps), error),
            )

    def add_service(self, host: str, started: float, duration_s: float, action: str, service: str, mode: str | None,
                    ok: bool, steps: list[dict[str, Any]], error: str = "") -> None:
        """One service operation (``action``: start, stop, restart, sleep, wake) in mode ``mode``."""
        with self.db:
            self.db.execute(
                "INSERT INTO switches (kind, host, started, duration_s, from_mode, to_mode, action, service, ok, steps, error) "
                "VALUES ('service',?,?,?,?,?,?,?,?,?,?)",
                (host, started, duration_s, mode, mode or "", action, service, int(ok), json.dumps(steps), error),
            )

    def add_simulation(self, mode: str | None, services: list[str], total_mb: int, gpu_mb: int, fits: bool) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO simulations (at, mode, services, total_mb, gpu_mb, fits) VALUES (?,?,?,?,?,?)",
                (time.time(), mode, json.dumps(services), total_mb, gpu_mb, int(fits)),
            )

    def entries(self, host: str | None = None, limit: int = 20, kind: str | None = None) -> list[dict[str, Any]]:
        """Newest first: switches and service operations (``kind`` narrows to one of them)."""
        where, args = [], []
        if host:
            where.append("host = ?")
            args.append(host)
        if kind:
            where.append("kind = ?")
            args.append(kind)
        q = f"SELECT {', '.join(self.KEYS)} FROM switches"
        if where:
            q += " WHERE " + " AND ".join(where)
        q += " ORDER BY id DESC LIMIT ?"
        out = []
        for r in self.db.execute(q, (*args, max(0, int(limit)))).fetchall():
            d = dict(zip(self.KEYS, r))
            d["steps"] = json.loads(d["steps"])
            d["ok"] = bool(d["ok"])
            d["error"] = d["error"] or ""
            out.append(d)
        return out

    def switches(self, host: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        return [{k: d[k] for k in ("host", "started", "duration_s", "from_mode", "to_mode", "ok", "steps", "error")}
                for d in self.entries(host, limit, kind="switch")]

    def close(self) -> None:
        self.db.close()
