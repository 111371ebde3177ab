"""The supervisor (hosts without systemd) knows its processes by identity, not by a number in a
file: a pid reused by another process is never signalled, and an unreadable pid file neither hides
nor orphans the service it stood for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx


def states(h):
    code, out, err = h.inv("status", "--json")
    assert code == 0, err
    d = json.loads(out)
    return d, {s["id"]: s["state"] for s in d["services"]}


def run_files(h, sid):
    run = h.state / "supervisor" / "run"
    return run / f"gpumod-{sid}.service.pid", run / f"gpumod-{sid}.service.pid.id"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_reused_pid_is_never_killed_and_the_service_reads_as_not_running(sim_host):
    h = sim_host
    code, out, err = h.inv("service.start", "--service-id", "emb")
    assert code == 0, err + out
    pidf, idf = run_files(h, "emb")
    pid = int(pidf.read_text())
    start_ticks = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19]
    assert idf.read_text().split()[0] == start_ticks  # the identity recorded at start
    os.kill(pid, signal.SIGKILL)  # the service dies behind gpumod's back ...
    assert wait_gone(pid)
    other = subprocess.Popen(["sleep", "300"])  # ... and its pid now names an unrelated process
    try:
        pidf.write_text(f"{other.pid}\n")
        _, st = states(h)
        assert st["emb"] == "failed"  # killed by a signal, not stopped: never "running"
        code, out, err = h.inv("service.stop", "--service-id", "emb")
        assert code == 0, err + out
        code, out, err = h.inv("sim.reset")
        assert code == 0, err + out
        assert other.poll() is None, "an unrelated process was killed as if it were the service"
        _, st = states(h)
        assert st["emb"] == "stopped"
        # a pid file without the identity (written by hand, or by an older gpumod) is not trusted either
        assert h.inv("service.start", "--service-id", "emb")[0] == 0
        real = int(pidf.read_text())
        idf.unlink()
        pidf.write_text(f"{other.pid}\n")
        assert h.inv("sim.reset")[0] == 0
        assert other.poll() is None
        assert wait_gone(real), "the real service was orphaned"  # found through its runner shell
    finally:
        other.kill()
        other.wait()


def test_a_garbled_pid_file_is_reported_and_the_service_is_not_orphaned(sim_host):
    from gpumod_tasks.host import LocalHost
    from gpumod_tasks.inventory import HostSpec
    from gpumod_tasks.service_manager import Supervisor

    h = sim_host
    sup = Supervisor(LocalHost(HostSpec(name="local")), str(h.state))
    unit = "gpumod-doc.service"
    assert h.inv("mode.switch", "--name", "rag")[0] == 0
    pidf, _ = run_files(h, "doc")
    real = int(pidf.read_text())
    pidf.write_text("\x00garbage 12 ")
    # the unit's runner shell still knows its child: running, with the pid file reported unreadable
    s = sup.states([unit])[unit]
    assert (s.active, s.main_pid, s.result) == ("active", real, "pidfile-garbled")
    d, st = states(h)
    assert st["doc"] == "running" and d["gpu"]["used_mb"] == 7500
    code, out, err = h.inv("mode.switch", "--name", "rag", "--json")
    assert code == 0 and json.loads(out)["steps"] == [], err + out  # nothing restarted twice
    sup.start(unit)  # a start writes the runner's child back as the unit's identity
    assert int(pidf.read_text()) == real and alive(real)
    assert sup.states([unit])[unit].result == "success"

    # garbled again, then a reset: the process really stops, and the log says what happened
    pidf.write_text("not a pid\n")
    code, out, err = h.inv("sim.reset")
    assert code == 0, err + out
    assert wait_gone(real), "sim.reset said everything stopped while doc still ran"
    try:
        httpx.get(f"http://127.0.0.1:{h.ports['doc']}/health", timeout=1, trust_env=False)
        raise AssertionError("doc still answers after the reset")
    except httpx.TransportError:
        pass
    code, out, err = h.inv("service.logs", "--service-id", "doc")
    assert code == 0 and f"pid file {pidf} unreadable ('not a pid')" in out, out
    _, st = states(h)
    assert st["doc"] == "stopped"

    # an unreadable pid file with nothing behind it: failed (never "running"), and a start starts it
    pidf.parent.mkdir(parents=True, exist_ok=True)
    pidf.write_text("12ab\n")
    s = sup.states([unit])[unit]
    assert (s.active, s.main_pid, s.result) == ("failed", 0, "pidfile-garbled")
    assert h.inv("mode.switch", "--name", "rag")[0] == 0
    _, st = states(h)
    assert st["doc"] == "running" and int(pidf.read_text()) != real
