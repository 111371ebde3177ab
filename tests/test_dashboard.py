"""`inv status --watch` driven in tmux against the simulated host while a switch runs."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest
from conftest import REPO


def capture(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def wait_for(session: str, pred, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = capture(session)
        if pred(screen) or time.monotonic() > deadline:
            return screen
        time.sleep(0.1)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_watch_dashboard_follows_a_switch_and_quits_on_ctrl_c(sim_host):
    session = f"gpumod-{uuid.uuid4().hex[:8]}"
    env = {"GPUMOD_HOME": str(sim_host.root), "GPUMOD_STATE_DIR": str(sim_host.state), "PYTHONPATH": str(REPO)}
    cmd = (" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
           + f" {shlex.quote(sys.executable)} -c 'import sys; from gpumod_tasks.program import main; sys.exit(main())'"
           + " status --watch --interval 0.5; echo WATCH-EXIT=$?; sleep 60")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "45", cmd], check=True)
    try:
        screen = wait_for(session, lambda s: "mode:" in s and "emb" in s)
        assert "NVIDIA GeForce RTX 4090" in screen and "0 / 24564 MB used" in screen
        assert "stopped" in screen and "Ctrl-C to quit" in screen
        code, out, err = sim_host.inv("mode.switch", "--name", "rag")
        assert code == 0, err
        screen = wait_for(session, lambda s: "mode: rag" in s and "7500 / 24564 MB used" in s)
        assert "mode: rag" in screen and "7500 / 24564 MB used" in screen, screen
        lines = {ln.split("│")[1].strip(): ln for ln in screen.splitlines() if ln.count("│") > 3}
        assert "running" in lines["emb"] and "2500" in lines["emb"] and "running" in lines["doc"]
        assert "last switch - -> rag took" in screen
        # uptime counts up on the next refreshes (no flicker: the frame is redrawn in place)
        first = lines["emb"]
        screen = wait_for(session, lambda s: any("emb" in ln and ln != first for ln in s.splitlines() if ln.count("│") > 3), 5)
        assert screen.count("Ctrl-C to quit") == 1  # one frame on screen, not a scroll of frames
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        screen = wait_for(session, lambda s: "WATCH-EXIT=" in s, 10)
        assert "WATCH-EXIT=0" in screen and "Traceback" not in screen
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
