"""The program: Invoke's core flags plus Fabric's host flags, the manual, -H resolution and
parallel hosts, and lazy Fabric."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpumod_tasks.errors import UnknownName
from gpumod_tasks.inventory import Inventory, load_inventory

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = ("mode", "service", "host", "doctor", "template", "gpu", "sim", "model", "mcp", "router", "fleet")


def test_list_is_a_manual_with_every_collection(sim_host):
    code, out, err = sim_host.inv("--list")
    assert code == 0
    for noun in COLLECTIONS:
        assert f"  {noun}." in out
    for name in ("mode.switch", "mode.simulate", "mode.verify", "service.logs", "template.install-all", "sim.up", "host.bootstrap"):
        assert name in out
    assert "status " in out


def test_help_of_a_task_lists_its_flags(sim_host):
    code, out, err = sim_host.inv("--help", "mode.switch")
    assert code == 0
    for flag in ("--name=STRING", "--dry-run", "--json", "--no-wait", "--no-quiesce", "--rollback"):
        assert flag in out
    assert "drift recovery" in out


def test_core_and_fabric_flags_parse(sim_host):
    code, out, err = sim_host.inv("--version")
    assert code == 0 and "gpumod" in out.lower()
    # Fabric's flags are accepted before the task
    code, out, err = sim_host.inv("-i", "/nonexistent/key", "-S", "/dev/null", "-t", "3", "mode.list")
    assert code == 0 and "rag" in out
    code, out, err = sim_host.inv("--complete", "--", "inv", "mode.sw")
    assert code == 0 and "mode.switch" in out
    code, out, err = sim_host.inv("--dry", "mode.list")
    assert code == 0


def test_inventory_resolves_names_groups_and_ssh_targets(tmp_path):
    p = tmp_path / "hosts.yaml"
    p.write_text("defaults:\n  reserve_mb: 100\nhosts:\n  box1:\n    ssh: admin@10.0.0.5:2222\n  box2:\n    ssh: box2\n"
                 "groups:\n  lab: [box1, box2]\n")
    inv = load_inventory(p)
    assert [h.name for h in inv.resolve(None)] == ["local"]
    b1 = inv.resolve("box1")[0]
    assert (b1.connection, b1.ssh_user, b1.ssh_host, b1.ssh_port, b1.reserve_mb) == ("ssh", "admin", "10.0.0.5", 2222, 100)
    assert [h.name for h in inv.resolve("lab,box1")] == ["box1", "box2"]
    adhoc = inv.resolve("root@192.0.2.9:22")[0]
    assert (adhoc.ssh_user, adhoc.ssh_host, adhoc.ssh_port, adhoc.reserve_mb) == ("root", "192.0.2.9", 22, 100)
    with pytest.raises(UnknownName):
        inv.resolve("bad host!")


def test_inventory_errors_name_file_and_field(tmp_path):
    from gpumod_tasks.errors import CatalogError

    p = tmp_path / "hosts.yaml"
    p.write_text("hosts:\n  a:\n    scope: galaxy\n    colour: red\ngroups:\n  g: [a, zz]\n")
    with pytest.raises(CatalogError) as ei:
        load_inventory(p)
    got = [str(x) for x in ei.value.problems]
    assert any(":3:12: hosts.a.scope: 'galaxy' is not one of: system, user" in g for g in got)
    assert any(":4:5: hosts.a.colour: unknown key" in g for g in got)
    assert any("groups.g[1]: unknown host 'zz'" in g for g in got)


def test_two_hosts_run_in_parallel_with_a_result_table(sim_host, tmp_path):
    h = sim_host
    extra = (f"  a:\n    connection: local\n    sim: true\n    state_dir: {tmp_path}/a\n"
             f"  b:\n    connection: local\n    sim: true\n    state_dir: {tmp_path}/b\n    gpu: {{name: Small, total_mb: 4000}}\n"
             "groups:\n  pair: [a, b]\n")
    h.write_inventory(extra=extra)
    code, out, err = h.inv("-H", "pair", "mode.status")
    assert code == 0, err
    assert "─ a ─" in out and "─ b ─" in out and "hosts" in out
    # one host failing does not stop the other; the exit code says so
    code, out, err = h.inv("-H", "a,b", "mode.switch", "--name", "chat")
    assert code == 1
    assert "FAILED" in out and "ok" in out
    assert "does not fit" in out
    h.stop_all()
    for d in ("a", "b"):
        for f in (tmp_path / d / "supervisor" / "run").glob("*.pid"):
            os.kill(int(f.read_text()), 15)


def test_local_tasks_never_import_fabric():
    code = ("import sys; from gpumod_tasks.program import make_program\n"
            "try:\n make_program().run(['inv', 'mode.list'])\nexcept SystemExit: pass\n"
            "assert 'paramiko' not in sys.modules and 'fabric' not in sys.modules, 'fabric imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr


def test_simulate_prints_fit_table_bar_and_alternatives(sim_host):
    code, out, err = sim_host.inv("mode.simulate", "--name", "rag")
    assert code == 0 and "Fits: 7500 / 24564 MB (headroom: 17064 MB, reserve 512 MB)" in out
    assert "[" in out and "AAAA" in out and "A=emb" in out
    code, out, err = sim_host.inv("mode.simulate", "--name", "chat", "--add", "doc", "--add", "router", "--add", "asr", "--json")
    d = json.loads(out)
    assert code == 1 and not d["fits"] and d["total_mb"] == 2500 + 9000 + 5000 + 6000 + 3000
    assert {a["kind"] for a in d["alternatives"]} >= {"time-share", "reduce-context"}
    code, out, err = sim_host.inv("mode.list", "--json")
    assert {m["id"]: m["total_vram_mb"] for m in json.loads(out)}["rag"] == 7500


def test_tasks_py_builds_the_same_namespace():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tasks_root", REPO / "tasks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert set(mod.ns.collections) == set(COLLECTIONS)
    assert "status" in mod.ns.tasks


def test_inventory_of_repo_is_valid():
    inv: Inventory = load_inventory(REPO / "inventory" / "hosts.yaml")
    assert inv.hosts["local"].gpu_total_mb == 24564 and "gpubox" in inv.hosts and inv.groups["lab"] == ("gpubox",)
