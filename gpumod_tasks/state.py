"""State: the current mode lives on the target (so two controllers agree); the history of
switches, service operations and simulations lives in SQLite on the controller.

The recorded mode is advisory: the switch engine plans against what really runs.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the planner reads ModeRecord: importing this module loads no host code or sqlite
    from .host.base import Host

from .errors import StateFileInvalid

log = logging.getLogger("gpumod.state")


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


def check_mode_record(text: str, file: str = "mode.json") -> ModeRecord:
    """The record in ``text``; StateFileInvalid naming ``file`` when its shape is wrong.

    Keys this version does not know are ignored, so a newer gpumod's record still reads."""
    def bad(message: str) -> StateFileInvalid:
        return StateFileInvalid(file, f"not a valid mode record: {message}")

    if not text.strip():
        raise bad("the file is empty")
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(d, dict):
        raise bad(f"expected a JSON object, got {_json_kind(d)}")
    mode = d.get("mode")
    if mode is not None and not (isinstance(mode, str) and mode):
        raise bad(f"mode: expected a mode id or null, got {_json_kind(mode)}")
    since = d.get("since", 0)
    if isinstance(since, bool) or not isinstance(since, (int, float)) or not math.isfinite(since) or since < 0:
        raise bad(f"since: expected a time in seconds, got {_json_kind(since)}")
    levels = d.get("sleep_levels") or {}
    if not isinstance(levels, dict):
        raise bad(f"sleep_levels: expected an object, got {_json_kind(levels)}")
    for k, v in levels.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 2:
            raise bad(f"sleep_levels.{k}: expected a sleep level 0-2, got {_json_kind(v)}")
    last = d.get("last_switch") or {}
    if not isinstance(last, dict):
        raise bad(f"last_switch: expected an object, got {_json_kind(last)}")
    failure = d.get("failure") or {}
    if not isinstance(failure, dict):
        raise bad(f"failure: expected an object, got {_json_kind(failure)}")
    return ModeRecord(mode=mode, since=float(since), sleep_levels={str(k): int(v) for k, v in levels.items()}, last_switch=last,
                      failure=failure)


def parse_mode_record(text: str | None, file: str = "mode.json") -> ModeRecord:
    """The recorded mode; no file means none recorded.  A record of the wrong shape is treated the
    same way, with a warning naming the file, so ``status`` and a switch (``blank`` above all)
    still work: the recorded mode is advisory, and the next switch writes a good one."""
    if text is None:
        return ModeRecord(None)
    try:
        return check_mode_record(text, file)
    except StateFileInvalid as exc:
        # said once per file and problem: the router daemon observes every few seconds
        if _warned.get(file) != exc.reason:
            _warned[file] = exc.reason
            log.warning("warning: %s; the mode is treated as unknown until the next switch rewrites it", exc)
        return ModeRecord(None)


_warned: dict[str, str] = {}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    return "a list" if isinstance(value, list) else "an object"


def read_mode(host: Host, state_dir: str) -> ModeRecord:
    path = mode_file(state_dir)
    return parse_mode_record(host.read_file(path), path)


def write_mode(host: Host, state_dir: str, record: ModeRecord) -> None:
    data: dict[str, Any] = {"mode": record.mode, "since": record.since, "sleep_levels": record.sleep_levels,
                            "last_switch": record.last_switch}
    if record.failure:
        data["failure"] = record.failure
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
        import sqlite3

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=10)
        try:
            with self.db:
                self.db.executescript(self.SCHEMA)
                self._migrate()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StateFileInvalid(path, f"not a usable switch history ({exc}); move it away and gpumod starts a new one") from None

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
        import sqlite3

        try:
            rows = self.db.execute(q, (*args, max(0, int(limit)))).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StateFileInvalid(self.path, f"cannot read the switch history ({exc})") from None
        out = []
        for r in rows:
            d = dict(zip(self.KEYS, r))
            try:
                d["steps"] = json.loads(d["steps"])
            except (TypeError, ValueError):
                d["steps"] = []  # one damaged row shows without its steps
            d["ok"] = bool(d["ok"])
            d["error"] = d["error"] or ""
            out.append(d)
        return out

    def switches(self, host: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        return [{k: d[k] for k in ("host", "started", "duration_s", "from_mode", "to_mode", "ok", "steps", "error")}
                for d in self.entries(host, limit, kind="switch")]

    def close(self) -> None:
        self.db.close()
