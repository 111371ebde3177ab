"""Several simulated GPUs on real test hosts: a tensor-parallel stand-in as a systemd unit (its
workers in the unit's cgroup; a dead worker takes the unit down as vLLM's engine death does), and a
remote box over SSH that gets one ledger per declared GPU from the shipped simulator package."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO, box_inventory, free_ports, ssh_inventory, wait_for

from gpumod_tasks.sim.ledger import Ledger, ledgers, sim_uuid

pytestmark = pytest.mark.systemd

H100 = "NVIDIA H100 80GB HBM3"
ONE_GPU_LINE = "    gpu: {name: NVIDIA GeForce RTX 4090, total_mb: 24564}"


def test_tp_workers_live_in_the_units_cgroup_and_a_dead_one_fails_the_unit(systemd_box, tmp_path):
    box = systemd_box
    inv = box_inventory("box", tmp_path / "box.pid", box.state, box.unit_dir)
    (box.sim.root / "inventory" / "hosts.yaml").write_text(
        "hosts:\n" + inv.replace(ONE_GPU_LINE, f"    gpus: {{count: 2, name: {H100}, total_mb: 81559}}"))
    code, out, err = box.inv("sim.up")
    assert code == 0, err + out
    sim_dir = box.state / "sim"
    assert [led.meta() for led in ledgers(sim_dir)] == [(i, sim_uuid("box", i), H100) for i in range(2)]
    port = free_ports(1)[0]
    unit = "gpumod-tp-probe.service"
    box.sd.run(["systemd-run", f"--unit={unit}", "-p", f"Environment=PYTHONPATH={REPO}",
                "-p", f"Environment=CUDA_VISIBLE_DEVICES={sim_uuid('box', 0)},{sim_uuid('box', 1)}",
                sys.executable, "-m", "gpumod_tasks.sim.server", "--flavor", "vllm", "--port", str(port),
                "--sim-dir", str(sim_dir), "--vram-mb", "20000", "--tensor-parallel-size", "2", "--load-s", "0",
                "--release-lag-s", "0.2"])
    shim = str(sim_dir / "bin" / "nvidia-smi")

    def apps() -> list[tuple[str, int, int]]:
        out = box.sd.run([shim, "--query-compute-apps=gpu_uuid,pid,used_memory", "--format=csv,noheader,nounits"]).stdout
        return [(u, int(p), int(m)) for u, p, m in (ln.split(", ") for ln in out.splitlines())]

    assert wait_for(lambda: len(apps()) == 2, 15), box.sd.run(["journalctl", "-u", unit, "--no-pager"], check=False).stdout
    found = apps()
    assert [(u, m) for u, _, m in found] == [(sim_uuid("box", 0), 10000), (sim_uuid("box", 1), 10000)]
    props = box.sd.show(unit, "MainPID", "ControlGroup")
    workers = [p for _, p, _ in found]
    assert int(props["MainPID"]) not in workers and len(set(workers)) == 2
    for pid in workers:  # each rank's worker is a process of the unit, as vLLM's are
        cg = box.sd.run(["cat", f"/proc/{pid}/cgroup"]).stdout.strip().rsplit(":", 1)[1]
        assert cg == props["ControlGroup"]
    box.sd.run(["kill", "-KILL", str(workers[1])])
    # the engine is dead: both GPUs are freed and the API server exits, so the unit fails
    assert wait_for(lambda: [led.snapshot().used_mb for led in ledgers(sim_dir)] == [0, 0], 5)
    assert box.sd.wait_for(unit, "ActiveState", "failed", 15) == "failed"
    journal = box.sd.run(["journalctl", "-u", unit, "--no-pager"], check=False).stdout
    assert "Worker proc VllmWorker-1 died unexpectedly" in journal
    box.sd.systemctl("reset-failed", unit, check=False)


@pytest.mark.boxes(1)
def test_a_remote_box_gets_one_ledger_per_declared_gpu(ssh_lab, tmp_path):
    lab = ssh_lab
    box = lab.boxes[0]
    inv = lab.sim.root / "inventory" / "hosts.yaml"
    two = "    gpus: [{name: NVIDIA GeForce RTX 3090, total_mb: 24576}, {name: NVIDIA GeForce RTX 4090, total_mb: 24564}]"
    inv.write_text(ssh_inventory(lab.boxes, tmp_path).replace(ONE_GPU_LINE, two))
    code, out, err = lab.inv("-H", "box1", "sim.up")
    assert code == 0, err + out
    shim = f"{tmp_path}/box1-state/sim/bin/nvidia-smi"
    listed = box.sd.run([shim, "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"]).stdout
    assert listed.splitlines() == [f"0, {sim_uuid('box1', 0)}, NVIDIA GeForce RTX 3090, 24576",
                                   f"1, {sim_uuid('box1', 1)}, NVIDIA GeForce RTX 4090, 24564"]
    # one GPU fewer while a process on the box holds memory on GPU 1: refused, nothing removed
    holder = int(box.sd.run(["sh", "-c", "sleep 120 >/dev/null 2>&1 & echo $!"]).stdout.strip())
    Ledger(f"{tmp_path}/box1-state/sim/gpu1.json").alloc(holder, 700, "w")
    inv.write_text(ssh_inventory(lab.boxes, tmp_path).replace(ONE_GPU_LINE, two.split("}, {")[0] + "}]"))
    code, out, err = lab.inv("-H", "box1", "sim.up")
    assert code != 0 and "gpu1.json is no longer declared but still holds 700 MB" in out + err
    box.sd.run(["kill", str(holder)], check=False)
    assert lab.inv("-H", "box1", "sim.reset")[0] == 0
    assert len(box.sd.run([shim, "-L"]).stdout.splitlines()) == 1
