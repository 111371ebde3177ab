"""Host protections (scripts and tasks, against a temporary root), doctor checks failing and then
passing after their fix, and bootstrap end to end (twice: the second run changes nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SYSCTL = REPO / "scripts" / "install-gpumod-sysctl.sh"
OOM = REPO / "scripts" / "oom-protection" / "install.sh"


def sh(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(script), *args], capture_output=True, text=True)


def test_sysctl_script_is_idempotent_under_a_root(tmp_path):
    r = sh(SYSCTL, "--root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    f = tmp_path / "etc/sysctl.d/90-gpumod.conf"
    assert r.stdout.splitlines()[0] == f"changed {f}"
    assert "vm.min_free_kbytes = 1048576" in f.read_text().splitlines()
    assert "not applied" in r.stdout  # nothing live under a root prefix
    r2 = sh(SYSCTL, "--root", str(tmp_path))
    assert r2.returncode == 0 and r2.stdout.splitlines()[0] == f"ok {f}"
    r3 = sh(SYSCTL, "--root", str(tmp_path), "--kbytes", "2097152")
    assert r3.stdout.splitlines()[0] == f"changed {f}" and "vm.min_free_kbytes = 2097152" in f.read_text()
    bad = sh(SYSCTL, "--root", str(tmp_path), "--kbytes", "lots")
    assert bad.returncode == 2 and "--kbytes must be a number" in bad.stderr
    assert sh(SYSCTL, "--root", str(tmp_path), "--bogus").returncode == 2


def test_oom_script_is_idempotent_under_a_root(tmp_path):
    r = sh(OOM, "--root", str(tmp_path), "sshd", "code-server.service")
    assert r.returncode == 0, r.stderr
    files = [tmp_path / f"etc/systemd/system/{u}.service.d/90-gpumod-oom.conf" for u in ("sshd", "code-server")]
    assert [ln.split()[0] for ln in r.stdout.splitlines()[:2]] == ["changed", "changed"]
    for f in files:
        lines = f.read_text().splitlines()
        assert "[Service]" in lines and "MemoryMin=512M" in lines and "OOMScoreAdjust=-900" in lines
    r2 = sh(OOM, "--root", str(tmp_path), "sshd", "code-server.service")
    assert [ln.split()[0] for ln in r2.stdout.splitlines()[:2]] == ["ok", "ok"]
    r3 = sh(OOM, "--root", str(tmp_path), "--oom-score", "-500", "sshd")
    assert r3.stdout.splitlines()[0].startswith("changed") and "OOMScoreAdjust=-500" in files[0].read_text()


def _inventory(sim_host, **extra):
    sim_host.write_inventory(**extra)


def test_doctor_sysctl_reads_procfs_live_and_the_drop_in_under_a_root(sim_host, tmp_path):
    proc = tmp_path / "proc"
    (proc / "sys/vm").mkdir(parents=True)
    (proc / "sys/vm/min_free_kbytes").write_text("67584\n")
    # live: a real GPU box's view (root prefix /), read from a fake procfs
    _inventory(sim_host, procfs=str(proc), root_prefix="/")
    code, out, err = sim_host.inv("doctor.sysctl")
    assert code == 1 and "vm.min_free_kbytes=67584 kB (< recommended 1048576 kB)" in out and "fix: inv host.sysctl" in out
    (proc / "sys/vm/min_free_kbytes").write_text("1048576\n")
    code, out, err = sim_host.inv("doctor.sysctl")
    assert code == 0 and "sysctl OK: vm.min_free_kbytes=1048576 kB (>= recommended 1048576 kB)" in out
    # under a root prefix: failing, then the task as the fix, then passing; twice converges
    root = tmp_path / "root"
    _inventory(sim_host, procfs=str(proc), root_prefix=str(root))
    code, out, err = sim_host.inv("doctor.sysctl")
    assert code == 1 and "no vm.min_free_kbytes drop-in" in out
    code, out, err = sim_host.inv("host.sysctl")
    assert code == 0 and "1 changed, 0 unchanged" in out
    assert sim_host.inv("host.sysctl")[1].count("0 changed, 1 unchanged") == 1
    code, out, err = sim_host.inv("doctor.sysctl")
    assert code == 0 and "sysctl OK: vm.min_free_kbytes=1048576 kB (>= recommended 1048576 kB)" in out


def test_doctor_oom_protection_fails_then_passes_after_the_task(sim_host, tmp_path):
    root = tmp_path / "root"
    _inventory(sim_host, root_prefix=str(root), oom_protect="[sshd.service, code-server.service]")
    code, out, err = sim_host.inv("doctor.oom-protection")
    assert code == 1 and "sshd.service.d/90-gpumod-oom.conf missing" in out and "fix: inv host.oom-protection" in out
    code, out, err = sim_host.inv("host.oom-protection")
    assert code == 0 and "2 changed, 0 unchanged" in out
    code, out, err = sim_host.inv("doctor.oom-protection")
    assert code == 0 and "oom-protection OK: drop-ins installed and directives correct" in out
    # a hand edit is caught, and the task repairs it
    f = root / "etc/systemd/system/sshd.service.d/90-gpumod-oom.conf"
    f.write_text(f.read_text().replace("OOMScoreAdjust=-900", "OOMScoreAdjust=0"))
    code, out, err = sim_host.inv("doctor.oom-protection")
    assert code == 1 and "OOMScoreAdjust=0, want -900" in out
    assert "1 changed, 1 unchanged" in sim_host.inv("host.oom-protection")[1]
    assert sim_host.inv("doctor.oom-protection")[0] == 0


def test_doctor_venv_names_package_constraint_and_version(sim_host, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))

    def installed(name: str, version: str) -> None:
        for old in site.glob(f"{name}-*.dist-info"):
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        d = site / f"{name}-{version}.dist-info"
        d.mkdir()
        (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")

    port = sim_host.ports["asr"]
    sim_host.write_preset("speech", "asr", f"id: asr\nname: asr\ndriver: fastapi\nport: {port}\nvram_mb: 3000\n"
                                           f"unit_vars:\n  command: [python, -m, asr]\n  venv: {venv}\n"
                                           "compat:\n  torch: '>=2.4'\n  transformers: '>=4.51,<5'\n")
    installed("torch", "2.3.1")
    code, out, err = sim_host.inv("doctor.venv", "--service-id", "asr")
    assert code == 1
    assert "torch: required >=2.4, installed 2.3.1" in out and "transformers: required <5,>=4.51, not installed" in out.replace(">=4.51,<5", "<5,>=4.51")
    installed("torch", "2.5.0")
    installed("transformers", "4.52.0")
    code, out, err = sim_host.inv("doctor.venv", "--service-id", "asr")
    assert code == 0 and out.strip() == ""  # silent when satisfied
    installed("transformers", "5.0.0")
    code, out, err = sim_host.inv("doctor.venv", "--service-id", "asr")
    assert code == 1 and "transformers: required >=4.51,<5, installed 5.0.0" in out


def test_doctor_presets_flags_footguns_and_doctor_gpu(sim_host):
    port = sim_host.ports["router"]
    sim_host.write_preset("code", "gemma", f"id: gemma\nname: gemma\ndriver: llamacpp\nport: {port + 0}\nvram_mb: 9000\n"
                                           "model_path: /m/gemma.gguf\nunit_vars:\n  parallel: 4\n  extra_args: [--swa-full]\n")
    code, out, err = sim_host.inv("doctor.presets")
    assert code == 1 and "--swa-full (parallel 4)" in out and "gemma.yaml" in out
    (sim_host.root / "presets" / "code" / "gemma.yaml").unlink()
    assert sim_host.inv("doctor.presets")[0] == 0
    # no NVIDIA driver here: a host declared real fails the GPU check with the fix; simulated passes
    _inventory_real = sim_host.root / "inventory" / "hosts.yaml"
    _inventory_real.write_text(_inventory_real.read_text().replace("sim: true", "sim: false"))
    code, out, err = sim_host.inv("doctor.gpu")
    assert code == 1 and "no GPU backend answered" in out and "sim: true" in out
    _inventory_real.write_text(_inventory_real.read_text().replace("sim: false", "sim: true"))
    code, out, err = sim_host.inv("doctor.gpu")
    assert code == 0 and "gpu OK: NVIDIA GeForce RTX 4090" in out and "simulated" in out


def test_bootstrap_twice_on_the_simulated_host_then_doctor_all(sim_host, tmp_path):
    _inventory(sim_host, default_mode="rag", warm_modes="[rag, code]")
    code, out, err = sim_host.inv("host.bootstrap")
    assert code == 0, err + out
    assert "warm-up" in out and "emb: started, healthy, asleep" in out and "router: started, healthy, asleep" in out
    assert "mode rag" in out
    state = sim_host.state
    assert (state / "sim/root/etc/sysctl.d/90-gpumod.conf").is_file()  # a simulated host never edits /etc
    code, out2, err = sim_host.inv("host.bootstrap")
    assert code == 0, err
    assert "everything already in place, nothing changed" in out2
    assert not [ln for ln in out2.splitlines() if ln.strip().startswith("changed")], out2
    assert out.count("\n  changed") >= 4  # the first run did change things (units, warm-ups, the mode)
    code, out, err = sim_host.inv("status", "--json")
    st = {s["id"]: s["state"] for s in json.loads(out)["services"]}
    assert st["emb"] == st["doc"] == "running" and st["router"] == "sleeping"
    code, out, err = sim_host.inv("doctor.all")
    assert code == 0, out
    for check in ("gpu", "sysctl", "oom-protection", "presets", "units"):
        assert check in out
