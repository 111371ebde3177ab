"""A switch on a simulated host with two GPUs, end to end: placement onto different GPUs, a
tensor-parallel service charged and attributed on both, the units carrying the placement, a mode
that fits in total but on no single GPU refused with nothing changed; locally (supervisor and a
private systemd) and over SSH."""

from __future__ import annotations

import json
import os

import pytest
from conftest import box_inventory, free_ports, ssh_inventory

from gpumod_tasks.sim.ledger import ledgers, sim_uuid

ONE_GPU_LINE = "    gpu: {name: NVIDIA GeForce RTX 4090, total_mb: 24564}"
TWO_GPUS = "    gpus: {count: 2, name: NVIDIA GeForce RTX 4090, total_mb: 24564}"


def vllm(sid: str, port: int, vram: int, extra: str = "") -> str:
    return (f"id: {sid}\nname: {sid}\ndriver: vllm\nport: {port}\nvram_mb: {vram}\nmodel_id: org/{sid}\n"
            f"supports_sleep: true\nsleep_mode: l1\nsleep_vram_mb: 500\n{extra}")


def catalog(sim_host) -> None:
    """Only these presets and modes (the fixture's own are removed)."""
    for f in [*(sim_host.root / "presets").rglob("*.yaml"), *(sim_host.root / "modes").glob("*.yaml")]:
        f.unlink()
    p = dict(zip("abctl", free_ports(5)))
    sim_host.write_preset("chat", "a", vllm("a", p["a"], 16000))
    sim_host.write_preset("chat", "b", vllm("b", p["b"], 14000))
    sim_host.write_preset("chat", "c", vllm("c", p["c"], 12000))
    sim_host.write_preset("chat", "tp", vllm("tp", p["t"], 20000, "tensor_parallel: 2\n"))
    sim_host.write_mode("two", ["a", "b"])
    sim_host.write_mode("wide", ["a", "b", "c"])
    sim_host.write_mode("tp", ["tp"])
    sim_host.write_mode("one", ["c"])
    sim_host.write_preset("code", "ll", f"id: ll\nname: ll\ndriver: llamacpp\nport: {p['l']}\nvram_mb: 10000\n"
                                        "model_path: /models/ll.gguf\ntensor_split: [3, 1]\n")
    sim_host.write_mode("split", ["ll"])
    sim_host.write_mode("blank", [])


class Local:
    """The simulated GPUs read from their ledgers by this process (the host is this machine)."""

    def __init__(self, sim_dir):
        self.sim_dir = sim_dir

    def apps(self) -> list[dict[int, int]]:
        return [dict(led.snapshot().per_pid) for led in ledgers(self.sim_dir)]

    def used(self) -> list[int]:
        return [led.snapshot().used_mb for led in ledgers(self.sim_dir)]


class InBox(Local):
    """Read with the box's own nvidia-smi shim: its processes live in its PID namespace."""

    def __init__(self, sd, shim: str):
        self.sd, self.shim = sd, shim

    def apps(self) -> list[dict[int, int]]:
        out = self.sd.run([self.shim, "--query-compute-apps=gpu_uuid,pid,used_memory", "--format=csv,noheader,nounits"]).stdout
        rows = [ln.split(", ") for ln in out.splitlines() if ln.strip()]
        uuids = self.sd.run([self.shim, "--query-gpu=uuid", "--format=csv,noheader,nounits"]).stdout.split()
        return [{int(p): int(m) for u, p, m in rows if u == uid} for uid in uuids]

    def used(self) -> list[int]:
        out = self.sd.run([self.shim, "--query-gpu=memory.used", "--format=csv,noheader,nounits"]).stdout
        return [int(x) for x in out.split()]


def switch(inv, mode: str, *extra: str) -> tuple[int, str, str]:
    return inv("mode.switch", "--name", mode, *extra)


def check_switches(inv, gpu: Local, host: str, unit_text) -> None:
    u0, u1 = sim_uuid(host, 0), sim_uuid(host, 1)
    code, out, err = switch(inv, "two", "--dry-run", "--json")
    assert code == 0, out + err
    plan = json.loads(out)
    assert plan["placement"] == {"a": [0], "b": [1]}
    assert [(g["index"], g["uuid"], g["projected_mb"]) for g in plan["gpus"]] == [(0, u0, 16000), (1, u1, 14000)]
    code, out, err = switch(inv, "two")
    assert code == 0, out + err
    assert "Placed:" in out and "a GPU0" in out and "b GPU1" in out
    assert gpu.used() == [16000, 14000]
    assert f"CUDA_VISIBLE_DEVICES={u0}" in unit_text("a") and f"CUDA_VISIBLE_DEVICES={u1}" in unit_text("b")
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in unit_text("a")

    # 16000 + 14000 + 12000 fits the two GPUs in total, but c fits on neither: refused, nothing changed
    before = gpu.apps()
    code, out, err = switch(inv, "wide")
    assert code != 0
    assert ("mode wide fits in total (42000 / 48104 MB) but no GPU has 12000 MB for c: GPU0 8052 MB free, "
            "GPU1 10052 MB free; nothing was changed") in out + err
    assert gpu.apps() == before

    # a tensor-parallel service: both GPUs, each its half; the leaving ones sleep on their own GPU
    code, out, err = switch(inv, "tp")
    assert code == 0, out + err
    assert gpu.used() == [500 + 10000, 500 + 10000]
    text = unit_text("tp")
    assert f"CUDA_VISIBLE_DEVICES={u0},{u1}" in text and "--tensor-parallel-size 2" in text
    code, out, err = inv("mode.switch", "--name", "tp", "--dry-run", "--json")
    assert code == 0 and json.loads(out)["steps"] == [] and json.loads(out)["placement"]["tp"] == [0, 1]
    # attributed on both GPUs: the observation gives tp its share on each
    code, out, err = inv("service.stop", "--service-id", "tp", "--dry-run")
    assert code == 0, out + err
    assert "GPU0 used <= 500 MB, GPU1 used <= 500 MB" in out
    # the release wait is met when both GPUs are down to their figure
    code, out, err = inv("service.stop", "--service-id", "tp")
    assert code == 0, out + err
    assert gpu.used() == [500, 500]
    code, out, err = switch(inv, "blank")
    assert code == 0, out + err
    assert gpu.used() == [0, 0]


def test_a_two_gpu_host_under_the_supervisor(sim_host):
    catalog(sim_host)
    sim_host.write_inventory()
    inv_file = sim_host.root / "inventory" / "hosts.yaml"
    inv_file.write_text(inv_file.read_text().replace(ONE_GPU_LINE, TWO_GPUS))
    units = sim_host.state / "supervisor" / "units"
    try:
        gpu = Local(sim_host.state / "sim")
        check_switches(sim_host.inv, gpu, "local", lambda sid: (units / f"gpumod-{sid}.service.sh").read_text())
        # a pin that changes under a running service: template.diff shows the new GPU, the switch moves it
        code, out, err = switch(sim_host.inv, "one")
        assert code == 0, out + err
        assert gpu.used() == [12000, 0]
        # its GPU memory no longer shown (a driver that lists no processes) while GPU1 became the
        # better fit: it keeps the GPU its installed unit names, nothing restarts
        leds = ledgers(sim_host.state / "sim")
        (c_pid,) = gpu.apps()[0]
        leds[0].free(c_pid, lag_s=0)
        leds[1].alloc(os.getpid(), 10000, "foreign")
        try:
            code, out, err = switch(sim_host.inv, "one", "--dry-run", "--json")
            assert code == 0, out + err
            assert json.loads(out)["steps"] == [] and json.loads(out)["placement"] == {"c": [0]}
        finally:
            leds[1].free(os.getpid(), lag_s=0)
            leds[0].alloc(c_pid, 12000, "weights")
        c = next((sim_host.root / "presets").rglob("c.yaml"))
        c.write_text(c.read_text() + "gpu: 1\n")
        code, out, err = sim_host.inv("template.diff")
        assert code == 1
        assert f"-exec env CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={sim_uuid('local', 0)}" in out
        assert f"+exec env CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={sim_uuid('local', 1)}" in out
        code, out, err = switch(sim_host.inv, "one", "--dry-run")
        assert code == 0 and "restart: moves from GPU 0 to GPU 1 (its pin)" in out, out + err
        code, out, err = switch(sim_host.inv, "one")
        assert code == 0, out + err
        assert gpu.used() == [0, 12000]
        assert switch(sim_host.inv, "one", "--dry-run")[1].count("nothing to do") == 1
        # a llama.cpp split: one process on both GPUs, by its ratios
        code, out, err = switch(sim_host.inv, "split")
        assert code == 0, out + err
        assert gpu.used() == [7500, 500 + 2500]
        assert "--tensor-split 3,1" in (units / "gpumod-ll.service.sh").read_text()
        on0, on1 = gpu.apps()
        assert list(on0.values()) == [7500] and list(on0) == [pid for pid, mb in on1.items() if mb == 2500]  # one pid
        code, out, err = sim_host.inv("service.stop", "--service-id", "ll", "--dry-run")
        assert "GPU0 used <= 0 MB, GPU1 used <= 500 MB" in out, out + err
    finally:
        sim_host.inv("mode.switch", "--name", "blank")
        sim_host.stop_all()


@pytest.mark.systemd
def test_a_two_gpu_host_with_systemd_units(systemd_box, tmp_path):
    box = systemd_box
    catalog(box.sim)
    inv = box_inventory("box", tmp_path / "box.pid", box.state, box.unit_dir)
    (box.sim.root / "inventory" / "hosts.yaml").write_text("hosts:\n" + inv.replace(ONE_GPU_LINE, TWO_GPUS))
    gpu = InBox(box.sd, str(box.state / "sim" / "bin" / "nvidia-smi"))
    try:
        check_switches(box.inv, gpu, "box", lambda sid: box.sd.run(["cat", f"{box.unit_dir}/gpumod-{sid}.service"]).stdout)
    finally:
        box.inv("mode.switch", "--name", "blank")


@pytest.mark.boxes(1)
def test_a_two_gpu_box_over_ssh(ssh_lab, tmp_path):
    lab = ssh_lab
    catalog(lab.sim)
    inv = lab.sim.root / "inventory" / "hosts.yaml"
    inv.write_text(ssh_inventory(lab.boxes, tmp_path).replace(ONE_GPU_LINE, TWO_GPUS))
    box = lab.boxes[0]
    try:
        check_switches(lambda *a: lab.inv("-H", "box1", *a), InBox(box.sd, f"{tmp_path}/box1-state/sim/bin/nvidia-smi"), "box1",
                       lambda sid: box.sd.run(["cat", f"/run/systemd/system/gpumod-{sid}.service"]).stdout)
    finally:
        lab.inv("-H", "box1", "mode.switch", "--name", "blank")


def test_a_dead_tensor_parallel_worker_is_noticed_and_the_switch_relaunches_it(sim_host):
    """Drift of one TP worker: killing the rank on GPU 1 frees both GPUs (vLLM shuts its executor
    down) and leaves the server answering 503; status says so and the same switch starts it again."""
    import os
    import signal

    from conftest import wait_for

    catalog(sim_host)
    sim_host.write_inventory()
    inv_file = sim_host.root / "inventory" / "hosts.yaml"
    inv_file.write_text(inv_file.read_text().replace(ONE_GPU_LINE, TWO_GPUS))
    gpu = Local(sim_host.state / "sim")
    try:
        code, out, err = switch(sim_host.inv, "tp")
        assert code == 0, out + err
        on0, on1 = gpu.apps()
        assert len(on0) == 1 and len(on1) == 1 and set(on0) != set(on1)  # a worker pid per GPU
        code, out, err = sim_host.inv("status", "--json")
        d = json.loads(out)
        tp = next(s for s in d["services"] if s["id"] == "tp")
        assert tp["state"] == "running" and tp["pid"] not in on0 and tp["pid"] not in on1
        assert tp["gpu_mb"] == {"0": 10000, "1": 10000}
        os.kill(next(iter(on1)), signal.SIGKILL)  # the rank on GPU 1 dies
        assert wait_for(lambda: gpu.used() == [0, 0], 10), gpu.used()
        code, out, err = sim_host.inv("status", "--json")
        tp = next(s for s in json.loads(out)["services"] if s["id"] == "tp")
        assert tp["state"] in ("unhealthy", "failed", "stopped"), tp
        code, out, err = switch(sim_host.inv, "tp", "--dry-run")
        assert code == 0 and "start tp" in out, out + err
        code, out, err = switch(sim_host.inv, "tp")
        assert code == 0, out + err
        assert gpu.used() == [10000, 10000]
    finally:
        sim_host.inv("mode.switch", "--name", "blank")
        sim_host.stop_all()
