"""The host lock's holder is shown as a switch in progress only while the lock is really held (and
its recorded pid, on this controller, alive): the text a crashed switch leaves behind is not one."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from gpumod_tasks.host import LocalHost
from gpumod_tasks.inventory import HostSpec
from gpumod_tasks.lock import held_lock_text, host_lock, lock_path


def record(pid: int, what: str = "mode.switch code", controller: str | None = None, ago: float = 46) -> str:
    return json.dumps({"pid": pid, "controller": controller or socket.gethostname(), "what": what, "since": time.time() - ago})


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


HOLDER = ("import fcntl, os, sys, time\n"
          "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n"
          "fcntl.flock(fd, fcntl.LOCK_EX)\n"
          "os.ftruncate(fd, 0); os.pwrite(fd, sys.argv[2].replace('PID', str(os.getpid())).encode(), 0)\n"
          "print('held', flush=True); time.sleep(60)\n")


def hold(path: str, text: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, path, text], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def watch_once(h) -> str:
    code, out, err = h.inv("status", "--watch", "--count", "1", "--interval", "0.1")
    assert code == 0, err
    return out


def test_a_crashed_switchs_text_is_not_a_switch_in_progress(sim_host):
    h = sim_host
    host = LocalHost(HostSpec(name="local"))
    path = lock_path(str(h.state))
    h.state.mkdir(parents=True, exist_ok=True)
    assert held_lock_text(host, str(h.state)) is None  # no lock file at all
    # a switch SIGKILLed mid-way: its text stays, the kernel freed its flock
    with open(path, "w") as fh:
        fh.write(record(dead_pid()))
    assert held_lock_text(host, str(h.state)) is None
    assert "switching:" not in watch_once(h)
    # even a record naming a live process is no holder while nobody holds the lock
    with open(path, "w") as fh:
        fh.write(record(1))
    assert held_lock_text(host, str(h.state)) is None
    # the next switch takes the lock over the stale text at once
    with host_lock(host, str(h.state), what="mode.switch rag", wait=False):
        assert json.loads(held_lock_text(host, str(h.state)) or "{}")["what"] == "mode.switch rag"
    assert held_lock_text(host, str(h.state)) is None


def test_a_held_lock_is_shown_and_disappears_with_its_holder(sim_host):
    h = sim_host
    host = LocalHost(HostSpec(name="local"))
    h.state.mkdir(parents=True, exist_ok=True)
    path = lock_path(str(h.state))
    p = hold(path, json.dumps({"pid": "PID", "controller": socket.gethostname(), "what": "mode.switch chat",
                               "since": time.time() - 3}).replace('"PID"', "PID"))
    try:
        text = held_lock_text(host, str(h.state))
        assert text is not None and json.loads(text)["pid"] == p.pid
        out = watch_once(h)
        assert f"switching: mode.switch chat (pid {p.pid} on {socket.gethostname()}, 3s ago)" in out, out
        # the lock is still there, but the recorded pid on this controller is dead: no holder shown
        p2 = hold(path + ".2", record(dead_pid()))
        try:
            assert held_lock_text(host, str(h.state)) is not None
            import os

            os.replace(path + ".2", path)  # the held file now names a dead pid
            assert held_lock_text(host, str(h.state)) is None
        finally:
            p2.kill()
            p2.wait()
    finally:
        p.kill()
        p.wait()
    assert held_lock_text(host, str(h.state)) is None  # the holder died: the kernel freed the lock
    assert "switching:" not in watch_once(h)


def test_a_probe_never_makes_a_no_wait_switch_refuse(sim_host):
    h = sim_host
    host = LocalHost(HostSpec(name="local"))
    h.state.mkdir(parents=True, exist_ok=True)
    import threading

    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            held_lock_text(host, str(h.state))

    t = threading.Thread(target=probe)
    t.start()
    try:
        for _ in range(200):
            with host_lock(host, str(h.state), what="mode.switch x", wait=False):
                pass
    finally:
        stop.set()
        t.join()


@pytest.mark.systemd
def test_stale_and_held_lock_over_ssh(ssh_lab):
    lab = ssh_lab
    box = lab.boxes[0]
    state = lab.ssh_config.parent / "box1-state"
    assert lab.inv("-H", "box1", "mode.switch", "--name", "rag")[0] == 0
    path = lock_path(str(state))
    box.sd.run(["sh", "-c", 'printf %s "$2" > "$1"', "sh", path, record(4242, controller="elsewhere")])
    code, out, err = lab.inv("-H", "box1", "status", "--watch", "--count", "1", "--interval", "0.1")
    assert code == 0 and "switching:" not in out, err + out
    # a holder on the box (another controller's switch): shown, with its own words
    box.sd.run(["systemd-run", "--unit", "gpumod-test-lockholder", "flock", path, "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while box.sd.run(["sh", "-c", f"flock -n {path} true"], check=False).returncode == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        code, out, err = lab.inv("-H", "box1", "status", "--watch", "--count", "1", "--interval", "0.1")
        assert code == 0 and "switching: mode.switch code (pid 4242 on elsewhere, " in out, err + out
        code, out, err = lab.inv("-H", "box1", "mode.switch", "--name", "code", "--no-wait")
        assert code != 0 and "another switch holds the host lock: mode.switch code (pid 4242 on elsewhere" in err + out
    finally:
        box.sd.systemctl("stop", "gpumod-test-lockholder", check=False)
    code, out, err = lab.inv("-H", "box1", "status", "--watch", "--count", "1", "--interval", "0.1")
    assert code == 0 and "switching:" not in out, err + out
