"""Fact parsers on captured output (no host), and the NVML backend on an in-memory pynvml."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from gpumod_tasks.facts.gpu import parse_nvidia_smi, read_nvml
from gpumod_tasks.facts.meminfo import parse_meminfo
from gpumod_tasks.facts.units import parse_systemctl_show

FIX = Path(__file__).parent / "fixtures"


def test_systemctl_show_blocks_garbage_and_missing_unit():
    text = (FIX / "systemctl/two_units.txt").read_text()
    units = ["gpumod-a.service", "gpumod-b.service", "gpumod-c.service", "gpumod-d.service"]
    st = parse_systemctl_show(text, units)
    a, b, c, d = (st[u] for u in units)
    assert (a.active, a.sub, a.main_pid, a.is_running) == ("active", "running", 4242, True)
    assert b.is_failed and b.result == "exit-code" and not b.is_running
    assert c.load == "not-found" and not c.is_running
    assert d.load == "not-found"  # absent from the output


def test_nvidia_smi_two_processes_one_unavailable():
    g = parse_nvidia_smi((FIX / "nvidia_smi/h100_two_procs.txt").read_text())
    p = g.primary
    assert (p.name, p.total_mb, p.used_mb, p.free_mb) == ("NVIDIA H100 80GB HBM3", 81559, 70212, 10810)
    assert p.per_pid == {12345: 70212, 12399: None}


def test_nvidia_smi_placeholders_become_none():
    p = parse_nvidia_smi((FIX / "nvidia_smi/mig_no_permission.txt").read_text()).primary
    assert (p.total_mb, p.used_mb, p.free_mb) == (None, None, None) and p.per_pid == {}


def test_nvidia_smi_two_gpus_processes_by_uuid():
    g = parse_nvidia_smi((FIX / "nvidia_smi/idle_no_processes.txt").read_text())
    assert [x.index for x in g.gpus] == [0, 1]
    assert g.gpus[0].per_pid == {} and g.gpus[1].per_pid == {777: 12000}


def test_meminfo_available_and_fallback():
    m = parse_meminfo((FIX / "meminfo/low.txt").read_text())
    assert (m.total_mb, m.available_mb, m.free_mb) == (32000, 2000, 500)
    m2 = parse_meminfo((FIX / "meminfo/no_available.txt").read_text())
    assert m2.available_mb == 2000  # MemFree + Cached on kernels without MemAvailable
    with pytest.raises(ValueError):
        parse_meminfo("garbage\n")


class FakeNvml(types.SimpleNamespace):
    """An in-memory pynvml: the same call surface, bytes in, like the real binding."""

    class NVMLError(Exception):
        pass

    nvmlMemory_v2 = 0x02000028

    def __init__(self, used: int, procs: list[tuple[int, int | None]]):
        super().__init__()
        self.used, self.procs, self.calls = used, procs, []

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"h{i}"

    def nvmlDeviceGetName(self, h):
        return "NVIDIA GeForce RTX 4090"

    def nvmlDeviceGetUUID(self, h):
        return b"GPU-eeee"

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        assert version == self.nvmlMemory_v2
        total = 24564 * 2**20
        return types.SimpleNamespace(total=total, used=self.used * 2**20, free=total - self.used * 2**20, reserved=0)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [types.SimpleNamespace(pid=p, usedGpuMemory=None if mb is None else mb * 2**20) for p, mb in self.procs]


def test_nvml_backend_reads_v2_memory_and_processes():
    fake = FakeNvml(7500, [(10, 2500), (11, 5000), (12, None)])
    g = read_nvml(fake)
    p = g.primary
    assert g.backend == "nvml"
    assert (p.name, p.uuid, p.total_mb, p.used_mb, p.free_mb) == ("NVIDIA GeForce RTX 4090", "GPU-eeee", 24564, 7500, 17064)
    assert p.per_pid == {10: 2500, 11: 5000, 12: None}
    assert fake.calls == ["init", "shutdown"]


def test_cgroup_walk_parser_and_the_real_script(tmp_path):
    """GPU processes that are not a unit's main pid map to their service: by the systemd cgroup in
    /proc/PID/cgroup, or by walking up to a unit's MainPID; one command for all of them."""
    import os
    import subprocess
    from types import SimpleNamespace

    from gpumod_tasks.host.local import LocalHost
    from gpumod_tasks.inventory import HostSpec
    from gpumod_tasks.observe import _owners_by_cgroup, parse_cgroup_walk

    text = "101 101 gpumod-vllm-chat.service\n101 50\n202 202\n202 77\n303 303\n303 1\n"
    assert parse_cgroup_walk(text, {77: "emb"}, {"gpumod-vllm-chat.service": "vllm-chat"}) == {101: "vllm-chat", 202: "emb"}
    # for real: a grandchild of this process is found by walking up to this process's pid
    child = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        for _ in range(100):
            kids = open(f"/proc/{child.pid}/task/{child.pid}/children").read().split()
            if kids:
                break
            import time

            time.sleep(0.02)
        grandchild = int(kids[0])
        t = SimpleNamespace(host=LocalHost(HostSpec(name="t")), catalog=SimpleNamespace(presets={}))
        found = _owners_by_cgroup(t, [grandchild, 999999], {os.getpid(): "me"})
        assert found == {grandchild: "me"}
    finally:
        child.kill()
        child.wait()
