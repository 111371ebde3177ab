"""Every task against remote boxes over real SSH: network namespaces with a private systemd and
Debian's sshd inside, reached only at their own addresses (10.213.N.2)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import REPO

pytestmark = pytest.mark.systemd


def test_bootstrap_switch_status_doctor_over_ssh(ssh_lab):
    lab = ssh_lab
    box = lab.boxes[0]
    code, out, err = lab.inv("-H", "box1", "host.bootstrap")
    assert code == 0, err + out
    assert f"host box1 (root@{box.addr})" in out and "service manager: systemd" in out
    assert "emb: started, healthy, asleep" in out
    code, out, err = lab.inv("-H", "box1", "host.bootstrap")
    assert code == 0 and "everything already in place, nothing changed" in out, err + out
    # units really run under the box's systemd, not here
    assert box.sd.systemctl("is-active", "gpumod-emb.service", check=False).stdout.strip() == "active"
    code, out, err = lab.inv("-H", "box1", "mode.switch", "--name", "code", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert [s["service"] for s in rep["summary"]["Slept"]] == ["doc"]
    assert [s["service"] for s in rep["summary"]["Started"]] == ["router"]
    assert rep["round_trips"] <= 20, err  # observe 1, sim check 1, lock-free steps; see GPUMOD_TRACE
    code, out, err = lab.inv("-H", "box1", "mode.status", "--json")
    assert code == 0, err
    st = {s["id"]: s["state"] for s in json.loads(out)["services"]}
    assert st["router"] == "running" and st["doc"] == "sleeping" and st["emb"] == "running"
    code, out, err = lab.inv("-H", "box1", "doctor.all")
    assert code == 0, out
    code, out, err = lab.inv("-H", "box1", "status", "--watch", "--count", "2", "--interval", "0.2")
    assert code == 0 and "mode: code" in out and "router" in out, err
    # drift over SSH: stopped behind gpumod's back, the same switch brings it back
    box.sd.systemctl("stop", "gpumod-emb.service")
    code, out, err = lab.inv("-H", "box1", "mode.switch", "--name", "code", "--json")
    assert code == 0 and [s["service"] for s in json.loads(out)["summary"]["Started"]] == ["emb"]


def test_plain_user_at_host_target_takes_the_inventory_defaults(ssh_lab, tmp_path):
    lab = ssh_lab
    addr = lab.boxes[0].addr
    inv = lab.sim.root / "inventory" / "hosts.yaml"
    inv.write_text("defaults:\n  sim: true\n  service_manager: systemd\n  unit_dir: /run/systemd/system\n"
                   f"  state_dir: {tmp_path}/adhoc-state\n  gpu: {{name: NVIDIA GeForce RTX 4090, total_mb: 24564}}\n"
                   "hosts: {}\n")
    code, out, err = lab.inv("-H", f"root@{addr}:22", "mode.switch", "--name", "rag")
    assert code == 0, err + out
    assert f"host root@{addr}:22: simulated GPU" in out
    assert lab.boxes[0].sd.systemctl("is-active", "gpumod-doc.service", check=False).stdout.strip() == "active"
    # a name that is neither in the inventory nor a valid target is refused with the known names
    code, out, err = lab.inv("-H", "no such host!", "mode.status")
    assert code == 2 and "unknown host" in err


@pytest.mark.boxes(2)
def test_two_hosts_in_parallel_with_a_result_table(ssh_lab):
    lab = ssh_lab
    t0 = time.perf_counter()
    code, out, err = lab.inv("-H", "lab", "mode.switch", "--name", "rag")
    wall = time.perf_counter() - t0
    assert code == 0, err + out
    assert "box1" in out and "box2" in out and out.count("rag in") >= 2
    for b in lab.boxes:
        assert b.sd.systemctl("is-active", "gpumod-emb.service", check=False).stdout.strip() == "active"
    # one box failing does not stop the other; the exit code says so
    lab.boxes[1].sd.systemctl("stop", "gpumod-test-sshd.service")
    code, out, err = lab.inv("-H", "box1,box2", "mode.switch", "--name", "code")
    assert code != 0
    assert "box2" in out + err and ("cannot reach" in out + err or "SSH connection failed" in out + err or "Unable to connect" in out + err)
    assert lab.boxes[0].sd.systemctl("is-active", "gpumod-router.service", check=False).stdout.strip() == "active"
    assert wall < 30


def test_unknown_host_key_is_refused_with_the_command_to_trust_it(ssh_lab):
    lab = ssh_lab
    lab.known_hosts.write_text("")
    code, out, err = lab.inv("-H", "box1", "mode.status")
    assert code != 0
    assert f"host key of {lab.boxes[0].addr} is not known; refusing to connect" in err + out
    assert f"ssh-keyscan {lab.boxes[0].addr} >> {lab.known_hosts}" in err + out


def test_connection_lost_mid_switch_names_host_and_step_and_rerun_converges(ssh_lab, tmp_path):
    lab = ssh_lab
    box = lab.boxes[0]
    assert lab.inv("-H", "box1", "mode.switch", "--name", "rag")[0] == 0
    # a slow model load, so the switch is mid-step when the session dies
    inv = lab.sim.root / "inventory" / "hosts.yaml"
    inv.write_text(inv.read_text().replace("load_s: 0.2", "load_s: 4"))
    env_cmd = [sys.executable, "-c", "import sys; sys.path.insert(0, %r); from gpumod_tasks.program import main; sys.exit(main())" % str(REPO),
               "-S", str(lab.ssh_config), "-H", "box1", "mode.switch", "--name", "code"]
    import os

    p = subprocess.Popen(env_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    port = lab.sim.ports["router"]
    probe = ("import json, sys, urllib.request; d = json.load(urllib.request.urlopen('http://127.0.0.1:%d/models', timeout=2)); "
             "print(d['data'][0]['status']['value'])" % port)
    deadline = time.monotonic() + 20
    in_box = ["ip", "netns", "exec", box.link.name, sys.executable, "-c", probe]  # the box's own 127.0.0.1
    while subprocess.run(in_box, capture_output=True, text=True).stdout.strip() != "loading":  # mid-load: load_s 4
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.05)
    # kill every SSH session on the box (children of the listening sshd), as a dropped link would
    pidfile = box.workdir / "sshd.pid"
    box.sd.run(["sh", "-c", f'for c in $(pgrep -P "$(cat {pidfile})"); do kill -9 "$c"; done'])
    out, err = p.communicate(timeout=30)
    assert p.returncode != 0
    assert "switch to code on box1 failed at step 'load router into its llama.cpp router" in err, err
    assert f"the SSH connection to {lab.boxes[0].addr} was lost" in err and "Re-run the same switch" in err, err
    # the host lock died with the session: re-running the switch converges
    code, out, err = lab.inv("-H", "box1", "mode.switch", "--name", "code", "--no-wait", "--json")
    assert code == 0, err
    code, out, err = lab.inv("-H", "box1", "mode.status", "--json")
    st = {s["id"]: s["state"] for s in json.loads(out)["services"]}
    assert st["router"] == "running" and st["emb"] == "running" and json.loads(out)["mode"] == "code"


@pytest.mark.skipif(not __import__("shutil").which("sudo"), reason="sudo is not installed (scripts/test.sh installs it)")
def test_non_root_user_with_system_scope_uses_sudo(ssh_lab, tmp_path):
    lab = ssh_lab
    box = lab.boxes[0]
    home = box.add_user("gpu")
    inv = lab.sim.root / "inventory" / "hosts.yaml"
    text = inv.read_text().replace(f"ssh: root@{box.addr}", f"ssh: gpu@{box.addr}")
    text = text.replace(f"state_dir: {tmp_path}/box1-state", f"state_dir: {home}/state")
    inv.write_text(text)
    code, out, err = lab.inv("-H", "box1", "mode.switch", "--name", "rag")
    assert code == 0, err + out + box.sd.run(["journalctl", "-u", "gpumod-test-sshd", "--no-pager"], check=False).stdout[-1500:]
    assert f"host box1 (gpu@{lab.boxes[0].addr})" in out
    # units were written to the system unit dir and started through `sudo -n systemctl`
    assert box.sd.systemctl("is-active", "gpumod-emb.service", check=False).stdout.strip() == "active"
    owner = box.sd.run(["stat", "-c", "%U", "/run/systemd/system/gpumod-emb.service"]).stdout.strip()
    assert owner == "root"
    code, out, err = lab.inv("-H", "box1", "service.logs", "--service-id", "emb")
    assert code == 0 and "gpumod-preflight: emb ok" in out, err + out
    # without sudo rights the error says so (sudo -n never prompts)
    (box.workdir / "etc" / "sudoers").write_text("Defaults env_reset\nroot ALL=(ALL:ALL) ALL\n")
    code, out, err = lab.inv("-H", "box1", "mode.switch", "--name", "code")
    assert code != 0 and "sudo" in (err + out).lower()


def test_mcp_server_drives_a_remote_host(ssh_lab):
    import os

    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    lab = ssh_lab
    params = StdioServerParameters(command=sys.executable,
                                   args=["-c", "import sys; from gpumod_tasks.program import main; sys.exit(main())",
                                         "-S", str(lab.ssh_config), "-H", "box1", "mcp.serve"],
                                   env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(REPO))

    async def run():
        async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            sw = await s.call_tool("gpu_mode_switch", {"mode": "rag"})
            st = await s.call_tool("gpu_mode_status", {})
            return sw, st

    sw, st = anyio.run(run)
    assert not sw.is_error, sw.content
    status = st.structured_content
    assert status["host"] == "box1" and status["mode"] == "rag" and status["gpu"]["used_mb"] == 7500
    assert lab.boxes[0].sd.systemctl("is-active", "gpumod-doc.service", check=False).stdout.strip() == "active"
