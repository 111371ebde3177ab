"""The history store (schema migration, service operations) and `inv mode.history` / the MCP tool."""

from __future__ import annotations

import json
import re
import sqlite3

from gpumod_tasks.state import History

OLD_SCHEMA = """
CREATE TABLE switches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL, started REAL NOT NULL, duration_s REAL NOT NULL,
    from_mode TEXT, to_mode TEXT NOT NULL, ok INTEGER NOT NULL,
    steps TEXT NOT NULL, error TEXT
);
"""


def test_a_file_from_before_service_operations_is_migrated(tmp_path):
    path = tmp_path / "history.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO switches (host, started, duration_s, from_mode, to_mode, ok, steps, error) VALUES "
               "('local', 100.0, 1.5, 'rag', 'code', 1, ?, NULL)", (json.dumps([{"step": "stop doc", "seconds": 0.5}]),))
    db.commit()
    db.close()

    h = History(str(path))
    cols = {r[1] for r in h.db.execute("PRAGMA table_info(switches)")}
    assert {"kind", "action", "service"} <= cols
    h.add_service("local", 200.0, 0.25, "sleep", "emb", "code", True, [{"step": "sleep emb L1", "seconds": 0.2}])
    h.add_service("other", 300.0, 0.1, "wake", "emb", "code", False, [], "boom")
    rows = h.entries()
    assert [(r["kind"], r["host"]) for r in rows] == [("service", "other"), ("service", "local"), ("switch", "local")]
    old = rows[-1]
    assert old["from_mode"] == "rag" and old["to_mode"] == "code" and old["error"] == "" and old["steps"][0]["seconds"] == 0.5
    assert rows[1]["action"] == "sleep" and rows[1]["service"] == "emb" and rows[1]["ok"] is True
    assert [r["kind"] for r in h.entries("local", kind="switch")] == ["switch"]
    assert len(h.entries(limit=1)) == 1
    # switches() keeps answering switches only, as before
    assert [s["to_mode"] for s in h.switches()] == ["code"]
    h.close()
    # opening a migrated file again changes nothing
    h = History(str(path))
    assert len(h.entries()) == 3
    h.close()


def test_mode_history_lists_switches_and_service_operations(sim_host):
    sim_host.write_inventory("  other:\n    connection: local\n    sim: true\n")
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    assert sim_host.inv("service.sleep", "--service-id", "emb")[0] == 0
    assert sim_host.inv("mode.switch", "--name", "code")[0] == 0

    code, out, err = sim_host.inv("mode.history", "--json", "--limit", "2")
    assert code == 0, err
    assert out.endswith("\n")
    rows = json.loads(out)
    assert [(r["kind"], r["title"]) for r in rows] == [("switch", "rag -> code"), ("service", "sleep emb")]
    switch, sleep = rows
    assert switch["ok"] and switch["host"] == "local" and switch["duration_s"] > 0
    steps = {s["step"].split(" (")[0]: s for s in switch["steps"]}
    assert "sleep doc L1" in steps and "wake emb" in steps and "load router into its llama.cpp router" in steps
    assert all(s["status"] == "changed" for s in switch["steps"] if s["kind"] != "wait-release")
    assert steps["start router unit gpumod-router.service for router"]["seconds"] > 0
    assert sleep["action"] == "sleep" and sleep["service"] == "emb" and sleep["to_mode"] == "rag"
    assert [s["kind"] for s in sleep["steps"]] == ["sleep", "wait-release", "record"] and sleep["steps"][0]["seconds"] > 0

    code, out, err = sim_host.inv("mode.history")
    assert code == 0
    assert "rag -> code" in out and "sleep emb" in out and "-> rag" in out and "service" in out
    assert re.search(r"\d+\.\d\ds start router", out) and re.search(r"\d+\.\d\ds sleep emb L1", out)
    # per host: -H narrows to that host's entries
    code, out, err = sim_host.inv("-H", "other", "mode.history", "--json")
    assert code == 0 and json.loads(out) == []
    code, out, err = sim_host.inv("-H", "local", "mode.history", "--json")
    assert code == 0 and len(json.loads(out)) == 3
    assert sim_host.inv("mode.history", "--limit", "0")[0] == 2


def test_a_failed_service_operation_is_recorded_with_its_error(sim_host):
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    # asr starts but never passes its health gate (a route its stand-in does not have)
    f = sim_host.root / "presets" / "speech" / "asr.yaml"
    f.write_text(f.read_text().replace("startup_timeout: 20", "startup_timeout: 2") + "health_endpoint: /nope\n")
    assert sim_host.inv("service.start", "--service-id", "asr")[0] != 0
    rows = json.loads(sim_host.inv("mode.history", "--json", "--limit", "1")[1])
    assert rows[0]["kind"] == "service" and rows[0]["action"] == "start" and rows[0]["ok"] is False
    assert "health gate failed for asr" in rows[0]["error"] and rows[0]["steps"][-1]["status"] == "failed"


def test_mcp_history_tool(sim_host):
    from test_mcp_model import call_all, payload

    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0

    async def script(s):
        return payload(await s.call_tool("gpu_mode_history", {"limit": 5})), await s.call_tool("gpu_mode_history", {"limit": 0})

    rows, bad = call_all(script)
    assert [r["title"] for r in rows] == ["- -> rag"] and rows[0]["kind"] == "switch"
    assert {s["step"].split(" (")[0] for s in rows[0]["steps"]} >= {"start emb", "start doc"}
    assert bad.is_error and "limit must be at least 1" in bad.content[0].text
