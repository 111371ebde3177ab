"""Fact parsers on captured output (no host), and the NVML backend on an in-memory pynvml."""

from __future__ import annotations

import os
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


# -- reading the GPU from a host: the backend fallback and its exit-code table ----------------------
def _sim_box(tmp_path, **spec):
    from gpumod_tasks.host import LocalHost
    from gpumod_tasks.inventory import HostSpec
    from gpumod_tasks.simhost import SimSetup

    hs = HostSpec(name="box", sim=True, gpu_total_mb=24564, **spec)
    host = LocalHost(hs)
    return host, SimSetup(host, hs, str(tmp_path / "state"))


def test_gpu_reader_nvidia_smi_backend_answers_and_its_failures_in_words(tmp_path, monkeypatch):
    from gpumod_tasks.errors import CommandFailed, GpuProbeError
    from gpumod_tasks.facts.gpu_read import EXIT_CODES, GpuReader

    host, sim = _sim_box(tmp_path)
    sim.ensure()
    # the simulator's nvidia-smi, found on PATH under the real binary's name
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").symlink_to(sim.shim_path)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("GPUMOD_SIM_DIR", sim.sim_dir)
    r = GpuReader(host, "box", backend="nvidia-smi")
    g = r.read()
    assert (g.backend, g.primary.total_mb, g.primary.used_mb) == ("nvidia-smi", 24564, 0)
    assert r.used_mb() == 0
    assert r.parse_fact(0, host.run(r.fact_argv()).stdout) == g
    # no driver (the shim's exit 9 and message, as the real one prints it): an answer, in words
    Path(sim.ledger_path).unlink()
    with pytest.raises(GpuProbeError, match=r"nvidia-smi: NVIDIA driver not loaded \(exit 9\): NVIDIA-SMI has failed"):
        r.read()
    with pytest.raises(GpuProbeError, match="NVIDIA driver not loaded"):
        r.used_mb()
    # not installed at all
    (bin_dir / "nvidia-smi").unlink()
    with pytest.raises(GpuProbeError, match=r"nvidia-smi not installed \(exit 127\)"):
        r.read()
    # an exit code no backend declares is the host failing, not an answer
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho odd >&2\nexit 42\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    assert 42 not in EXIT_CODES["nvidia-smi"]
    with pytest.raises(CommandFailed):
        r.read()


def test_gpu_reader_sets_up_a_missing_simulated_gpu_then_reads_it(tmp_path):
    from gpumod_tasks.facts.gpu_read import SHIM_REPAIRABLE, SIM_BACKEND, GpuReader, accepted

    host, sim = _sim_box(tmp_path)
    assert SHIM_REPAIRABLE <= set(accepted("shim"))
    calls = []
    r = GpuReader(host, "box", shim=sim.shim_path, repair=lambda: calls.append(sim.ensure()))
    g = r.read()  # the shim does not exist yet (exit 127): set up once, asked again
    assert len(calls) == 1 and "nvidia-smi shim" in calls[0]
    assert (g.backend, g.primary.name, g.primary.total_mb) == (SIM_BACKEND, "NVIDIA GeForce RTX 4090", 24564)
    Path(sim.ledger_path).unlink()  # exit 9: no simulated GPU
    assert r.parse_fact(9, "").primary.total_mb == 24564 and len(calls) == 2
    assert r.read().primary.used_mb == 0 and len(calls) == 2  # nothing to repair: no set-up


def test_gpu_reader_reads_a_local_simulated_gpu_in_process_as_the_shim_reports_it(tmp_path):
    from gpumod_tasks.errors import GpuProbeError
    from gpumod_tasks.facts.gpu_read import SIM_BACKEND, SIM_LEDGER_BACKEND, GpuReader
    from gpumod_tasks.sim.ledger import Ledger

    host, sim = _sim_box(tmp_path)
    sim.ensure()
    led = Ledger(sim.ledger_path)
    me = os.getpid()  # a live owner: the ledger starts the lag for dead ones
    led.alloc(me, 3000, tag="weights")
    led.alloc(me, 1200, tag="kv")
    shim = GpuReader(host, "box", shim=sim.shim_path)
    ours = GpuReader(host, "box", shim=sim.shim_path, sim_dir=sim.sim_dir)
    a, b = shim.read(), ours.read()
    assert a.gpus == b.gpus and b.primary.used_mb == 4200  # the figures the shim reports
    assert (a.backend, b.backend) == (SIM_BACKEND, SIM_LEDGER_BACKEND)  # each says how it was read
    assert [g.per_pid for g in a.gpus] == [g.per_pid for g in b.gpus] == [{me: 4200}]
    assert ours.used_mb() == shim.used_mb() == 4200
    # no process is started: it answers with the shim gone (the shim reader cannot)
    Path(sim.shim_path).unlink()
    assert ours.read() == b
    with pytest.raises(GpuProbeError):
        shim.read()
    # a released allocation is seen once the lag has passed, as the shim sees it
    led.free(me, tag="kv", lag_s=0)
    assert ours.used_mb() == 3000
    # no ledger: set up again through repair, else the shim's exit-9 answer in words
    Path(sim.ledger_path).unlink()
    with pytest.raises(GpuProbeError, match="no simulated GPU"):
        ours.read()
    calls = []
    fixing = GpuReader(host, "box", shim=sim.shim_path, sim_dir=sim.sim_dir, repair=lambda: calls.append(sim.ensure()))
    assert fixing.read().primary.used_mb == 0 and len(calls) == 1
    # a corrupt ledger is the simulator failing, in words
    Path(sim.ledger_path).write_text("{")
    with pytest.raises(GpuProbeError, match="simulator failed"):
        ours.read()


@pytest.mark.skipif(Path("/proc/driver/nvidia/version").exists(), reason="a real NVIDIA driver answers NVML here")
def test_gpu_reader_falls_back_from_nvml_and_names_every_backend_that_failed(tmp_path, monkeypatch):
    from gpumod_tasks.errors import GpuProbeError
    from gpumod_tasks.facts.gpu_read import GpuReader

    host, _ = _sim_box(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi either
    with pytest.raises(GpuProbeError, match=r"no GPU backend answered: NVML: .+; nvidia-smi: nvidia-smi not installed"):
        GpuReader(host, "box", backend="auto").read()
    with pytest.raises(GpuProbeError, match=r"\[box\] NVML failed"):
        GpuReader(host, "box", backend="nvml").read()
