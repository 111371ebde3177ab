#!/usr/bin/env python3
"""Benchmark gpumod's own overhead on the simulated GPU host, with the stand-ins' delays known.

    .venv/bin/python scripts/bench.py [--runs 5]

Measures, in one run (compare ratios, not absolute numbers, on a noisy machine):
  1. sleep/wake switch code -> rag: engine overhead = switch duration - the stand-ins' inherent
     delays (release lag + L1 wake time); and the whole command's wall time
  2. no-op switch (already converged), whole command
  3. `inv status` with 20 running services, whole command (and with 2, to show it stays flat)
  4. VRAM-release detection: how long after the release lag the poll noticed, as % of the lag
With --ssh, the same again against a remote test box over real SSH (a network namespace with a
private systemd and Debian's sshd, as the tests build; needs root), plus the round trips of a
switch. It uses a throwaway catalog on free ports and its own state dirs; nothing else is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import free_ports

REPO = Path(__file__).resolve().parent.parent
LOAD_S, WAKE_L1_S, LAG_S = 0.5, 0.3, 1.0
ROUTER_REAP_S = 0.05  # the router stand-in reaps an unloaded child 50 ms after /models/unload, then the lag starts


def setup(root: Path) -> None:
    (root / "presets" / "bench").mkdir(parents=True)
    (root / "modes").mkdir()
    (root / "inventory").mkdir()
    shutil.copytree(REPO / "templates", root / "templates")
    ports = free_ports(24)
    presets = {"emb": ("vllm", 2500, "l1"), "doc": ("vllm", 5000, "l1"), "coder": ("llamacpp", 12000, "router")}
    for i in range(20):
        presets[f"s{i:02d}"] = ("vllm", 300, "l1")
    for (sid, (driver, vram, sleep)), port in zip(presets.items(), ports):
        (root / "presets" / "bench" / f"{sid}.yaml").write_text(
            f"id: {sid}\nname: {sid}\ndriver: {driver}\nport: {port}\nvram_mb: {vram}\nmodel_size_mb: 100\n"
            f"supports_sleep: true\nsleep_mode: {sleep}\nsleep_vram_mb: {0 if driver == 'llamacpp' else 100}\n")
    modes = {"rag": ["emb", "doc"], "code": ["emb", "coder"], "twenty": [f"s{i:02d}" for i in range(20)],
             "two": ["s00", "s01"], "blank": []}
    for mid, svcs in modes.items():
        (root / "modes" / f"{mid}.yaml").write_text(f"id: {mid}\nname: {mid}\nservices: [{', '.join(svcs)}]\n")
    (root / "inventory" / "hosts.yaml").write_text(
        "hosts:\n  local:\n    connection: local\n    sim: true\n    gpu: {name: NVIDIA GeForce RTX 4090, total_mb: 24564}\n"
        f"    sim_timings: {{load_s: {LOAD_S}, wake_l1_s: {WAKE_L1_S}, wake_l2_s: 0.8, release_lag_s: {LAG_S}}}\n")


PREFIX: list[str] = []
_VENV_INV = REPO / ".venv" / "bin" / "inv"
# the checkout's venv, else this interpreter with this checkout first on the path
INV = [str(_VENV_INV)] if _VENV_INV.exists() else [sys.executable, "-m", "gpumod_tasks.program"]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def inv(*args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([*INV, *PREFIX, *args], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"inv {' '.join(args)} failed: {r.stderr}")
    return dt, r.stdout


def measure(runs: int, label: str) -> None:
    inv("mode.switch", "--name", "rag")
    inv("mode.switch", "--name", "code")
    overheads, walls, detect, trips = [], [], [], []
    for _ in range(runs):
        wall, out = inv("mode.switch", "--name", "rag", "--json")
        rep = json.loads(out)
        steps = {s["kind"]: s for s in rep["steps"]}
        inherent = ROUTER_REAP_S + LAG_S + WAKE_L1_S
        overheads.append(rep["duration_s"] - inherent)
        walls.append(wall)
        trips.append(rep["round_trips"])
        detect.append(steps["wait-release"]["seconds"] - ROUTER_REAP_S - LAG_S)
        inv("mode.switch", "--name", "code")
    noop = [inv("mode.switch", "--name", "code")[0] for _ in range(runs)]
    inv("mode.switch", "--name", "two")
    st2 = [inv("status")[0] for _ in range(runs)]
    inv("mode.switch", "--name", "twenty")
    st20 = [inv("status")[0] for _ in range(runs)]
    lst = [inv("--list")[0] for _ in range(runs)]
    inv("mode.switch", "--name", "blank")
    med = statistics.median
    print(f"== {label}: stand-in delays: load {LOAD_S}s, L1 wake {WAKE_L1_S}s, release lag {LAG_S}s; {runs} runs each, medians")
    print(f"code -> rag (sleep router, wait release, wake L1): engine overhead {med(overheads) * 1000:.0f} ms "
          f"(max {max(overheads) * 1000:.0f} ms); whole command {med(walls):.3f} s; round trips {med(trips):.0f} "
          f"(min {min(trips)}, max {max(trips)})")
    print(f"release detected {med(detect) * 1000:.0f} ms after the {LAG_S:.1f} s lag "
          f"({med(detect) / LAG_S * 100:.1f}% of the lag; max {max(detect) / LAG_S * 100:.1f}%)")
    print(f"no-op switch (converged), whole command: {med(noop):.3f} s")
    print(f"inv status, whole command: 2 services {med(st2):.3f} s, 20 services {med(st20):.3f} s "
          f"(ratio {med(st20) / med(st2):.2f})")
    print(f"inv --list, whole command: {med(lst):.3f} s")


def ssh_box(tmp: Path):
    sys.path.insert(0, str(REPO / "tests"))
    from nshost import SshBox

    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    known = tmp / "known_hosts"
    known.touch()
    # the box's network 10.213.N.0/24: apart from the tests' (GPUMOD_TEST_NET_BASE + 0..9)
    index = int(os.environ.get("GPUMOD_BENCH_NET_INDEX") or 200 + int(os.environ.get("GPUMOD_TEST_NET_BASE", "0")) // 10)
    box = SshBox(tmp / "box", index).up(key, known)
    cfg = tmp / "ssh_config"
    cfg.write_text(f"Host 10.213.*\n  User root\n  IdentityFile {key}\n  UserKnownHostsFile {known}\n")
    with open(tmp / "home" / "inventory" / "hosts.yaml", "a") as fh:
        fh.write(f"  box:\n    ssh: root@{box.addr}\n    sim: true\n    service_manager: systemd\n"
                 f"    unit_dir: /run/systemd/system\n    state_dir: {tmp}/box-state\n"
                 "    gpu: {name: NVIDIA GeForce RTX 4090, total_mb: 24564}\n"
                 f"    sim_timings: {{load_s: {LOAD_S}, wake_l1_s: {WAKE_L1_S}, wake_l2_s: 0.8, release_lag_s: {LAG_S}}}\n")
    return box, cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ssh", action="store_true", help="also measure against an SSH test box (root)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gpumod-bench-"))
    os.environ.update(GPUMOD_HOME=str(tmp / "home"), GPUMOD_STATE_DIR=str(tmp / "state"), COLUMNS="120")
    setup(tmp / "home")
    box = None
    try:
        measure(a.runs, "local (simulated host, supervisor)")
        if a.ssh:
            box, cfg = ssh_box(tmp)
            PREFIX[:] = ["-S", str(cfg), "-H", "box"]
            measure(a.runs, f"over SSH to {box.addr} (network namespace, private systemd, sshd)")
    finally:
        PREFIX[:] = []
        subprocess.run([*INV, "sim.reset"], capture_output=True)
        if box is not None:
            box.down()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
