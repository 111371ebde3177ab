"""On the simulated host: a service killed a moment ago still has its VRAM charged (the driver
gives it back late: the ledger's release lag). Re-running the switch at once names the dying
process and waits for it instead of refusing with "does not fit"; if it is still held after the
release timeout, the run fails with that name."""

from __future__ import annotations

import os
import re
import signal
import time

from conftest import run_cli


def _set_inventory(sim_host, *, lag: str, release_timeout_s: str = "10") -> None:
    """The simulated driver's release lag and gpumod's release timeout (conftest writes 0.25 and 10)."""
    inv = sim_host.root / "inventory" / "hosts.yaml"
    text = re.sub(r"release_lag_s: [0-9.]+", f"release_lag_s: {lag}", inv.read_text())
    inv.write_text(re.sub(r"release_timeout_s: [0-9.]+", f"release_timeout_s: {release_timeout_s}", text))


def _kill_big(sim_host) -> int:
    pidfile = next((sim_host.state / "supervisor" / "run").glob("*big*.pid"))
    pid = int(pidfile.read_text().strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:  # reaped by its runner shell
        time.sleep(0.01)
    return pid


def test_a_rerun_right_after_a_killed_service_waits_for_its_vram(sim_host):
    # big (13000 MB) + emb (2500 MB) fit the 24564 MB GPU once, not with a dead big's 13000 MB still charged
    p = next((sim_host.root / "presets").rglob("big.yaml"))
    p.write_text(p.read_text().replace("vram_mb: 9000", "vram_mb: 13000"))
    _set_inventory(sim_host, lag="2.5", release_timeout_s="0.5")
    code, out, err = run_cli(["mode.switch", "--name", "chat"])
    assert code == 0, out + err
    pid = _kill_big(sim_host)
    # the plan names it and waits (a dry run shows it)
    code, out, err = run_cli(["mode.switch", "--name", "chat", "--dry-run"])
    assert code == 0 and f"releasing: pid {pid} of big (13000 MB)" in out, out + err
    assert "does not fit" not in out + err
    # with a release timeout shorter than the driver's lag, the run fails naming the process
    code, out, err = run_cli(["mode.switch", "--name", "chat"])
    assert code != 0 and f"releasing: pid {pid} of big (13000 MB): still held after 0.5s" in out + err, out + err
    assert "does not fit" not in out + err
    # with time enough it waits, then starts big: converged
    _set_inventory(sim_host, lag="2.5", release_timeout_s="10")
    code, out, err = run_cli(["mode.switch", "--name", "chat"])
    assert code == 0, out + err
    code, out, err = run_cli(["mode.verify", "--name", "chat"])
    assert code == 0, out + err


def test_the_wait_is_there_right_after_the_kill(sim_host):
    p = next((sim_host.root / "presets").rglob("big.yaml"))
    p.write_text(p.read_text().replace("vram_mb: 9000", "vram_mb: 13000"))
    _set_inventory(sim_host, lag="1.5")
    assert run_cli(["mode.switch", "--name", "chat"])[0] == 0
    pid = _kill_big(sim_host)
    t0 = time.monotonic()
    code, out, err = run_cli(["mode.switch", "--name", "chat"])
    assert code == 0 and "does not fit" not in out + err, out + err
    assert f"releasing: pid {pid} of big" in out, out
    assert time.monotonic() - t0 >= 1.0  # it did wait for the lag, rather than loading into charged memory
    assert run_cli(["mode.verify", "--name", "chat"])[0] == 0

