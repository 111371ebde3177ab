"""Several boxes behind one URL: LiteLLM's proxy (from `inv fleet.config`) in front of two SSH test
boxes' router daemons, driven with the official openai SDK."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import REPO, free_ports, ssh_inventory

DAEMON_PORT = 8787


def litellm_python() -> str | None:
    """An interpreter with litellm[proxy]: $GPUMOD_FLEET_PYTHON, the checkout's .venv-fleet (what
    scripts/test.sh installs), or this one."""
    for py in (os.environ.get("GPUMOD_FLEET_PYTHON"), str(REPO / ".venv-fleet" / "bin" / "python"), sys.executable):
        if py and os.path.exists(py) and subprocess.run(
                [py, "-c", "import importlib.util as u, sys; sys.exit(0 if u.find_spec('litellm.proxy') and u.find_spec('openai') else 1)"],
                capture_output=True, check=False).returncode == 0:
            return py
    return None


FLEET_PY = litellm_python()
needs_litellm = pytest.mark.skipif(FLEET_PY is None, reason="litellm[proxy] is not installed: scripts/test.sh installs it into "
                                                            ".venv-fleet (or set GPUMOD_FLEET_PYTHON)")


def _openai_path() -> None:
    """The openai SDK lives beside litellm (its own venv): make it importable here."""
    try:
        import openai  # noqa: F401
    except ImportError:
        site = subprocess.run([FLEET_PY, "-c", "import openai, os; print(os.path.dirname(os.path.dirname(openai.__file__)))"],
                              capture_output=True, text=True, check=True).stdout.strip()
        sys.path.append(site)


# -- pure parts -----------------------------------------------------------------------------------

def test_orders_awake_first_then_asleep_then_fits(repo_catalog, tmp_path):
    from gpumod_tasks.fleet.config import deployments, litellm_config
    from gpumod_tasks.fleet.settings import fleet_settings
    from gpumod_tasks.inventory import load_inventory

    inv_file = tmp_path / "hosts.yaml"
    inv_file.write_text("hosts:\n  local: {connection: local, fleet: {master_key_file: /k}}\n"
                        "  a: {ssh: a.lan, router_daemon: {bind: 0.0.0.0, api_key_file: /ka}, gpu: {total_mb: 24564}}\n"
                        "  b: {ssh: b.lan, router_daemon: {bind: 10.0.0.2}, gpu: {total_mb: 24564}}\n"
                        "  c: {ssh: c.lan, router_daemon: true}\n")
    fs = fleet_settings(load_inventory(inv_file))
    assert [b.url for b in fs.boxes] == ["http://a.lan:8787", "http://10.0.0.2:8787"]
    assert fs.skipped and fs.skipped[0].startswith("c: its router daemon binds 127.0.0.1 only")
    cat = repo_catalog
    sid = next(s for s, p in sorted(cat.presets.items()) if any(s in m.service_ids for m in cat.modes.values()))
    other = next(s for s in sorted(cat.presets) if s != sid)
    deps = {d.id: d.order for d in deployments(fs, cat, {"a": {sid: "sleeping", other: "active"}, "b": {sid: "active"}})}
    assert deps[f"b/{sid}"] == 1 and deps[f"a/{sid}"] == 11 and deps[f"a/{other}"] == 1
    assert f"b/{other}" not in deps  # box b's catalog has no such service
    deps = {d.id: d.order for d in deployments(fs, cat, {"a": {sid: "sleeping"}, "b": {sid: "sleeping"}})}
    assert deps[f"a/{sid}"] == 11 and deps[f"b/{sid}"] == 12  # asleep on both: exactly one is woken
    deps = {d.id: d.order for d in deployments(fs, cat, {"a": None, "b": {sid: "stopped"}})}
    assert deps[f"b/{sid}"] == 22 and deps[f"a/{sid}"] == 41
    cfg = litellm_config(fs, deployments(fs, cat, {"a": {sid: "active"}, "b": None}))
    a = next(m for m in cfg["model_list"] if m["model_info"]["id"] == f"a/{sid}")
    assert a["litellm_params"]["api_key"] == "os.environ/GPUMOD_FLEET_KEY_A"
    assert a["litellm_params"]["api_base"] == "http://a.lan:8787/v1"
    assert cfg["general_settings"]["background_health_checks"] is False


def test_listening_addresses_from_proc_net_tcp():
    from gpumod_tasks.fleet.listen import bound_as_intended, listening

    tcp = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
           "   0: 0100007F:0FA0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n"
           "   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1\n"
           "   2: 0100007F:0FA0 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1\n")
    assert listening(tcp, 4000) == {"127.0.0.1"}
    assert listening(tcp, 8080) == {"0.0.0.0"}
    assert bound_as_intended({"127.0.0.1"}, "127.0.0.1") and not bound_as_intended({"0.0.0.0"}, "127.0.0.1")
    tcp6 = ("  sl  local_address                         remote_address                        st\n"
            "   0: 00000000000000000000000000000000:0FA0 00000000000000000000000000000000:0000 0A\n")
    assert listening(tcp6, 4000) == {"::"}


def test_without_litellm_fleet_tasks_name_the_extra(sim_host, tmp_path):
    bare = tmp_path / "python-without-site"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S -I \"$@\"\n")
    bare.chmod(0o755)
    sim_host.write_inventory("  gpubox: {ssh: gpubox.lan, router_daemon: {bind: 0.0.0.0}}\n",
                             fleet=f"{{python: {bare}, master_key_file: {tmp_path}/mk}}")
    for task in ("fleet.config", "fleet.serve"):
        code, out, err = sim_host.inv(task)
        assert code == 2, out + err
        lines = [ln for ln in (out + err).splitlines() if ln.strip()]
        assert len(lines) == 1 and "pip install 'gpumod[fleet]'" in lines[0], lines


@pytest.mark.systemd
def test_fleet_unit_rendered_started_by_bootstrap_and_checked_by_doctor(systemd_box, tmp_path):
    box = systemd_box
    mk = tmp_path / "master.key"
    port = free_ports(1)[0]
    inv = box.sim.root / "inventory" / "hosts.yaml"
    base = inv.read_text()
    fleet = f"    fleet: {{port: {port}, master_key_file: {mk}, python: {FLEET_PY or sys.executable}}}\n"
    inv.write_text(base + fleet)
    code, out, err = box.inv("template.install-all")
    assert code == 0, err + out
    text = box.sd.run(["cat", f"{box.unit_dir}/gpumod-fleet.service"]).stdout
    assert "fleet.serve --as-host box" in text and "# Generated by gpumod" in text
    code, out, err = box.inv("doctor.fleet")
    assert code == 1 and "master key not set" in out, out
    mk.write_text("sk-fleet-" + os.urandom(8).hex() + "\n")
    code, out, err = box.inv("doctor.fleet")
    assert code == 1 and f"nothing listens on port {port}" in out, out
    if FLEET_PY is not None:
        # host.bootstrap starts the unit; the proxy comes up in the box's systemd, bound where set
        code, out, err = box.inv("host.bootstrap", "--no-warmup")
        assert code == 0 and f"fleet proxy gpumod-fleet.service on port {port}" in out, err + out
        deadline = time.monotonic() + 120
        while True:
            code, out, err = box.inv("doctor.fleet")
            if code == 0:
                break
            assert time.monotonic() < deadline, out + box.sd.run(["journalctl", "-u", "gpumod-fleet", "--no-pager"], check=False).stdout[-3000:]
            time.sleep(1)
        assert "fleet OK" in out and "master key required" in out and f"127.0.0.1:{port}" in out, out
    # the fleet setting gone: the unit goes with it (stopped, then removed)
    inv.write_text(base)
    code, out, err = box.inv("template.install-all")
    assert code == 0, err + out
    assert box.sd.run(["test", "-e", f"{box.unit_dir}/gpumod-fleet.service"], check=False).returncode != 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=1, trust_env=False)


# -- two boxes behind LiteLLM ---------------------------------------------------------------------

class Fleet:
    def __init__(self, lab, tmp_path: Path):
        self.lab = lab
        self.tmp = tmp_path
        self.port = free_ports(1)[0]
        self.master = "sk-fleet-" + os.urandom(8).hex()
        (tmp_path / "master.key").write_text(self.master + "\n")
        self.keys = {}
        for i, b in enumerate(lab.boxes, 1):
            self.keys[f"box{i}"] = f"box{i}-" + os.urandom(8).hex()
            (tmp_path / f"box{i}.key").write_text(self.keys[f"box{i}"] + "\n")
        self.proc: subprocess.Popen | None = None
        self.log = tmp_path / "fleet.log"

    def daemon(self, i: int) -> str:
        return f"http://{self.lab.boxes[i - 1].addr}:{DAEMON_PORT}"

    def states(self, i: int) -> dict[str, str]:
        r = httpx.get(self.daemon(i) + "/models", headers={"Authorization": f"Bearer {self.keys[f'box{i}']}"},
                      timeout=10, trust_env=False)
        r.raise_for_status()
        return {m["id"]: m["state"] for m in r.json()["models"]}

    def orders(self) -> dict[str, int]:
        r = httpx.get(f"http://127.0.0.1:{self.port}/model/info", headers={"Authorization": f"Bearer {self.master}"},
                      timeout=10, trust_env=False)
        r.raise_for_status()
        return {m["model_info"]["id"]: m["litellm_params"]["order"] for m in r.json()["data"]}

    def wait_orders(self, want: dict[str, int], timeout: float = 5.0) -> float:
        t0 = time.monotonic()
        while True:
            have = self.orders()
            if all(have.get(k) == v for k, v in want.items()):
                return time.monotonic() - t0
            assert time.monotonic() - t0 < timeout, f"routing did not follow within {timeout} s: {have}, want {want}; " + self.tail()
            time.sleep(0.1)

    def serve(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        argv = [sys.executable, "-c", "import sys; from gpumod_tasks.program import main; sys.exit(main())", "fleet.serve"]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, self.tail()
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health/liveliness", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "LiteLLM's proxy did not come up: " + self.tail()
            time.sleep(0.25)

    def tail(self) -> str:
        if not self.log.exists():
            return ""
        lines = [ln for ln in self.log.read_text().splitlines() if "GET /model/info" not in ln and "/health/liveliness" not in ln]
        return "\n".join(lines)[-4000:]

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def client(self):
        _openai_path()
        import openai

        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=self.master, max_retries=0,
                             timeout=60, http_client=httpx.Client(trust_env=False, timeout=60))


def served_by(client, model: str = "doc") -> str:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi there"}])
    comp = raw.parse()
    assert comp.choices[0].message.content.strip(), comp
    return raw.headers["x-litellm-model-id"]


@needs_litellm
@pytest.mark.systemd
@pytest.mark.boxes(2)
def test_two_boxes_behind_litellm(ssh_lab, tmp_path):
    lab = ssh_lab
    fleet = Fleet(lab, tmp_path)
    # doc answers after 40 ms and streams word by word, so a load has requests in flight
    lab.sim.write_preset("embedding", "doc", f"id: doc\nname: doc service\ndriver: vllm\nport: {lab.sim.ports['doc']}\n"
                                              "vram_mb: 5000\nstartup_timeout: 20\nsupports_sleep: true\nsleep_mode: l1\n"
                                              "model_size_mb: 2000\nunit_vars: {infer_s: 0.04, stream_delay_s: 0.02}\n")
    # the daemons run this checkout's code: a wrapper as the boxes' gpumod_python
    py = tmp_path / "gpumod-python"
    py.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} \"$@\"\n")
    py.chmod(0o755)
    text = ssh_inventory(lab.boxes, tmp_path)
    for i, b in enumerate(lab.boxes, 1):
        text = text.replace(f"  box{i}:\n", f"  box{i}:\n    router_daemon: {{port: {DAEMON_PORT}, bind: {b.addr}, reconcile_s: 1, "
                                            f"api_key_file: {tmp_path}/box{i}.key}}\n"
                                            f"    vars: {{gpumod_python: {py}, gpumod_home: {lab.sim.root}}}\n")
    text = text.replace("hosts:\n", f"hosts:\n  local:\n    connection: local\n    sim: true\n"
                                    f"    fleet: {{port: {fleet.port}, bind: 127.0.0.1, master_key_file: {tmp_path}/master.key, "
                                    f"python: {FLEET_PY}, sync_interval_s: 0.5, config: {tmp_path}/fleet/litellm.yaml}}\n", 1)
    (lab.sim.root / "inventory" / "hosts.yaml").write_text(text)

    code, out, err = lab.inv("-H", "lab", "host.bootstrap")
    assert code == 0, err + out
    assert out.count("router daemon gpumod.service on port 8787") == 2, out
    code, out, err = lab.inv("-H", "box1", "mode.switch", "--name", "code")  # doc asleep on box1, awake on box2
    assert code == 0, err + out
    deadline = time.monotonic() + 20
    while True:
        try:
            if fleet.states(1)["doc"] == "sleeping" and fleet.states(2)["doc"] == "active":
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the daemons did not report doc asleep on box1, awake on box2"
        time.sleep(0.2)

    # the config from the inventory and the boxes' states; no secret in it
    code, out, err = lab.inv("fleet.config", "--json")
    assert code == 0, err + out
    rep = json.loads(out)
    assert rep["deployments"]["box2/doc"] == 1 and rep["deployments"]["box1/doc"] == 11, rep
    assert rep["deployments"]["box1/emb"] == 1 == rep["deployments"]["box2/emb"]
    cfg_text = Path(rep["config"]).read_text()
    assert fleet.master not in cfg_text and not any(k in cfg_text for k in fleet.keys.values())
    assert "os.environ/GPUMOD_FLEET_KEY_BOX1" in cfg_text and f"http://{lab.boxes[0].addr}:{DAEMON_PORT}/v1" in cfg_text

    fleet.serve()
    try:
        with open(f"/proc/{fleet.proc.pid}/cmdline", "rb") as fh:
            assert fleet.master.encode() not in fh.read()
        code, out, err = lab.inv("-H", "local", "doctor.fleet")
        assert code == 0 and "fleet OK" in out and "master key required" in out, out + err
        client = fleet.client()

        # awake on box2, asleep on box1: box2 serves, box1 stays asleep
        assert {served_by(client) for _ in range(6)} == {"box2/doc"}
        assert fleet.states(1)["doc"] == "sleeping"

        # streaming through both hops, chunk by chunk
        raw = client.chat.completions.with_raw_response.create(model="doc", stream=True,
                                                               messages=[{"role": "user", "content": "one two three four"}])
        assert raw.headers["x-litellm-model-id"] == "box2/doc"
        pieces = [ch.choices[0].delta.content for ch in raw.parse() if ch.choices and ch.choices[0].delta.content]
        assert len(pieces) >= 4 and "one two three four" in "".join(pieces), pieces

        # a mode switched on box2 by the CLI: the fleet's routing follows within 5 s
        code, out, err = lab.inv("-H", "box2", "mode.switch", "--name", "code")
        assert code == 0, err + out
        took = fleet.wait_orders({"box2/doc": 12, "box1/doc": 11}, timeout=5)
        print(f"routing followed box2's switch in {took:.2f} s")

        # asleep on both: concurrent requests wake it on exactly one box
        with ThreadPoolExecutor(4) as ex:
            ids = list(ex.map(lambda _: served_by(client), range(4)))
        assert set(ids) == {"box1/doc"}, ids
        assert fleet.states(1)["doc"] == "active" and fleet.states(2)["doc"] == "sleeping"
        fleet.wait_orders({"box1/doc": 1, "box2/doc": 12})

        # awake on both; box1's daemon killed mid-load: requests go to box2, none lost
        code, out, err = lab.inv("-H", "box2", "mode.switch", "--name", "rag")
        assert code == 0, err + out
        fleet.wait_orders({"box1/doc": 1, "box2/doc": 1})
        results: list[tuple[float, int, str]] = []
        lock = threading.Lock()
        killed_at: list[float] = []

        def one(_: int) -> None:
            import openai

            t = time.monotonic()
            try:
                who, status = served_by(client), 200
            except openai.APIStatusError as exc:
                h = exc.response.headers
                status, who = exc.status_code, f"retry-after={h.get('retry-after') or h.get('llm_provider-retry-after')}"
            except openai.APIConnectionError as exc:  # lost: never acceptable
                status, who = 0, repr(exc)
            with lock:
                results.append((t, status, who))

        with ThreadPoolExecutor(8) as ex:
            futs = [ex.submit(one, i) for i in range(160)]
            while sum(f.done() for f in futs) < 30:
                time.sleep(0.01)
            sd = lab.boxes[0].sd
            sd.run(["kill", "-9", sd.systemctl("show", "-p", "MainPID", "--value", "gpumod.service").stdout.strip()])
            lab.boxes[0].sd.systemctl("stop", "gpumod.service")  # and keep it down (Restart=on-failure)
            killed_at.append(time.monotonic())
            for f in futs:
                f.result()
        bad = [r for r in results if not (r[1] == 200 or (r[1] in (429, 503) and "retry-after=None" not in r[2]))]
        assert not bad, bad
        ok = [r for r in results if r[1] == 200]
        assert len(ok) >= 150, results
        assert {w for t, s, w in ok if t < killed_at[0]} == {"box1/doc", "box2/doc"}
        after = {w for t, s, w in ok if t > killed_at[0] + 1}
        assert after == {"box2/doc"}, after
        # the sync saw box1 go: its deployments go last
        fleet.wait_orders({"box1/doc": 41, "box2/doc": 1})
        assert {served_by(client) for _ in range(4)} == {"box2/doc"}
    finally:
        rc = fleet.stop()
    assert rc == 0, fleet.tail()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{fleet.port}/health/liveliness", timeout=1, trust_env=False)
