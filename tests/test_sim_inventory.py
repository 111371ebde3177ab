"""Declaring a simulated host's GPUs in the inventory, setting them up (one ledger per GPU, the
shim listing them), and a host's own catalog."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gpumod_tasks.errors import CatalogError, SettingInvalid
from gpumod_tasks.inventory import GpuDecl, HostSpec, load_inventory
from gpumod_tasks.sim.ledger import Ledger, sim_uuid

H100 = "NVIDIA H100 80GB HBM3"


def _inv(tmp_path: Path, text: str):
    p = tmp_path / "hosts.yaml"
    p.write_text(text)
    return load_inventory(p)


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(CatalogError) as ei:
        _inv(tmp_path, text)
    return [str(p).replace(str(tmp_path / "hosts.yaml"), "hosts.yaml") for p in ei.value.problems]


def test_gpus_as_a_list_a_count_or_the_old_single_gpu(tmp_path):
    inv = _inv(tmp_path, "defaults:\n  gpu: {name: D, total_mb: 1000}\nhosts:\n"
                         "  a:\n    gpus: [{name: A, total_mb: 100}, {name: B, total_mb: 200}]\n"
                         f"  b:\n    gpus: {{count: 2, name: {H100}, total_mb: 81559}}\n"
                         "  c:\n    gpu: {name: C, total_mb: 5}\n"
                         "  d: {}\n")
    h = inv.hosts
    assert h["a"].gpus == (GpuDecl("A", 100), GpuDecl("B", 200)) and (h["a"].gpu_name, h["a"].gpu_total_mb) == ("A", 100)
    assert h["b"].gpus == (GpuDecl(H100, 81559),) * 2 and h["b"].gpu_total_mb == 81559
    assert h["c"].gpus == (GpuDecl("C", 5),) and (h["c"].gpu_name, h["c"].gpu_total_mb) == ("C", 5)
    assert h["d"].gpus == (GpuDecl("D", 1000),)  # the defaults' GPU, inherited
    # a HostSpec built by hand with the old fields still declares its one GPU
    assert HostSpec(name="x", gpu_total_mb=24564).declared_gpus == (GpuDecl("", 24564),)
    assert HostSpec(name="x").declared_gpus == ()


def test_bad_gpu_declarations_are_refused_with_file_line_and_field(tmp_path):
    got = _problems(tmp_path, "hosts:\n"
                              "  a:\n    gpus:\n      - {name: X, total_mb: -1}\n      - 7\n      - {name: Y, bogus: 1}\n"
                              "  b:\n    gpus: {name: H, total_mb: 1}\n"
                              "  c:\n    gpu: {name: Z}\n    gpus: [{name: Q}]\n"
                              "  d:\n    gpus: []\n"
                              "  e:\n    gpus: two\n"
                              "  f:\n    gpus: {count: 65}\n")
    assert got == [
        "hosts.yaml:4:29: hosts.a.gpus[0].total_mb: must be >= 0, got -1",
        "hosts.yaml:5:9: hosts.a.gpus[1]: expected a mapping of name, total_mb, got an integer (7)",
        "hosts.yaml:6:19: hosts.a.gpus[2].bogus: unknown key (known keys: name, total_mb)",
        "hosts.yaml:8:11: hosts.b.gpus.count: required field is missing",
        "hosts.yaml:11:5: hosts.c.gpus: declare either gpu (one GPU) or gpus (several), not both",
        "hosts.yaml:13:11: hosts.d.gpus: expected 1 to 64 GPUs, got 0",
        "hosts.yaml:15:11: hosts.e.gpus: expected a list of {name, total_mb} or a mapping of count, name, total_mb, got a string ('two')",
        "hosts.yaml:17:19: hosts.f.gpus.count: must be <= 64, got 65",
    ]


def _setup(tmp_path: Path, **spec):
    from gpumod_tasks.host import LocalHost
    from gpumod_tasks.simhost import SimSetup

    hs = HostSpec(name="hg", sim=True, **spec)
    return SimSetup(LocalHost(hs), hs, str(tmp_path / "state"))


def test_two_declared_gpus_set_up_two_ledgers_the_shim_lists(tmp_path):
    two = (GpuDecl(H100, 81559),) * 2
    sim = _setup(tmp_path, gpus=two)
    changed = sim.ensure()
    assert [c for c in changed if c.startswith("simulated GPU")] == [
        f"simulated GPU {i}: {H100} (81559 MB, {sim_uuid('hg', i)})" for i in range(2)]
    assert sim.ensure() == []  # unchanged: nothing written
    r = subprocess.run([sim.shim_path, "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"],
                       capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert r.stdout.splitlines() == [f"{i}, {sim_uuid('hg', i)}, {H100}, 81559" for i in range(2)]
    # GPU 1 removed from the declaration while a live process holds memory there: refused, kept
    Ledger(sim.ledger_paths[1]).alloc(os.getpid(), 500, "w")
    one = _setup(tmp_path, gpus=two[:1])
    with pytest.raises(SettingInvalid, match=r"gpu1.json is no longer declared but still holds 500 MB .*sim.reset"):
        one.ensure()
    assert Path(sim.ledger_paths[1]).exists()
    Ledger(sim.ledger_paths[1]).free(os.getpid(), lag_s=0)
    assert "simulated GPU 1 removed (no longer declared)" in one.ensure()
    assert not Path(sim.ledger_paths[1]).exists()
    # the old single-GPU declaration: one ledger, GPU 0 under the host's own UUID
    old = _setup(tmp_path, gpu_name="NVIDIA GeForce RTX 4090", gpu_total_mb=24564)
    old.ensure()
    assert Ledger(old.ledger_path).meta() == (0, sim_uuid("hg", 0), "NVIDIA GeForce RTX 4090")


def test_a_host_runs_its_own_catalog(sim_host):
    other = sim_host.root / "examples" / "two"
    (other / "presets" / "x").mkdir(parents=True)
    (other / "modes").mkdir()
    (other / "presets" / "x" / "solo.yaml").write_text("id: solo\nname: solo\ndriver: vllm\nport: 9555\nvram_mb: 100\n")
    (other / "modes" / "only.yaml").write_text("id: only\nname: Only\nservices: [solo]\n")
    sim_host.write_inventory("  two:\n    connection: local\n    sim: true\n    service_manager: supervisor\n"
                             f"    state_dir: {sim_host.state}/two\n    catalog: examples/two\n"
                             "  bad:\n    connection: local\n    sim: true\n    catalog: examples/none\n")
    code, out, err = sim_host.inv("-H", "two", "mode.list", "--json")
    assert code == 0, err
    import json

    assert [m["id"] for m in json.loads(out)] == ["only"]
    code, out, _ = sim_host.inv("mode.list", "--json")  # the default host: the project's catalog
    assert "only" not in [m["id"] for m in json.loads(out)] and "rag" in [m["id"] for m in json.loads(out)]
    code, out, err = sim_host.inv("-H", "bad", "mode.list")
    assert code == 2 and "catalog: examples/none" in out + err and "presets/ and modes/" in out + err
