"""The router daemon under faults and hostile HTTP: background loops that survive errors, the
concurrency limit under a real burst, the front door (Host, Origin, JSON only, limits), dead
services whose requests wait for the restart, a broken catalog on reload, idle sleep's clock."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time

import httpx
import pytest
from conftest import wait_for
from test_router_daemon import set_sim

pytestmark = pytest.mark.usefixtures("sim_host")


def test_background_loops_survive_failing_observations(sim_host, daemon_factory, caplog):
    """Corrupt mode records and an unreadable one (an OSError) make observations (and the idle
    loop) raise for several cycles; the loops log it and carry on: a service killed afterwards is still noticed and restarted, and
    idle sleep still happens."""
    caplog.set_level(logging.INFO, logger="gpumod.router")
    (sim_host.root / "modes" / "idle.yaml").write_text(
        "id: idle\nname: idle\nservices:\n  - id: emb\n    sleep_on_idle: 3\n  - doc\n")
    assert sim_host.inv("mode.switch", "--name", "idle")[0] == 0
    record = sim_host.state / "mode.json"
    good = record.read_text()
    d = daemon_factory(reconcile_s=0.1, idle_check_s=0.1)
    try:
        # a mode that is not a name (the idle loop looks it up), then a 'since' that is not a number
        record.write_text(json.dumps({**json.loads(good), "mode": ["idle"]}))
        time.sleep(0.6)
        record.write_text(json.dumps({**json.loads(good), "since": "yesterday"}))
        time.sleep(0.6)
        record.unlink()
        record.mkdir()  # reading it is an OSError (IsADirectoryError)
        time.sleep(0.6)
    finally:
        if record.is_dir():
            record.rmdir()
        record.write_text(good)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(m.startswith("reconcile: ") and "mode.json" in m for m in errors), errors
    # logged once per distinct error, not once per cycle
    assert len(errors) <= 6, errors
    # the reconcile loop still runs: a kill behind the daemon's back shows as stopped ...
    pid = d.manager.seen.services["doc"].unit.main_pid
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: d.states()["doc"] == "stopped", 5), d.states()
    # ... and the next request restarts it
    r = d.chat("doc")
    assert r.status_code == 200 and d.states()["doc"] == "active"
    # the idle loop still runs: emb (never asked for) goes to sleep after its 3 s
    assert wait_for(lambda: d.states()["emb"] == "sleeping", 8), d.states()
    assert any("working again" in r.getMessage() for r in caplog.records)


def test_concurrency_limit_holds_for_requests_released_from_the_queue(sim_host, daemon_factory):
    """16 requests for a stopped model with --concurrency 4: they queue while it starts, and then
    never more than 4 are in flight; all are answered."""
    set_sim(sim_host, "doc", infer_s=0.3, load_s=0.5)
    assert sim_host.inv("mode.switch", "--name", "code")[0] == 0  # doc is in rag only: a switch
    d = daemon_factory(concurrency=4, request_timeout_s=30)
    peak = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], d.manager.in_flight["doc"])
            time.sleep(0.005)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    try:
        codes = [r.status_code for r in d.chats_at_once("doc", 16)]
    finally:
        stop.set()
        th.join()
    assert codes == [200] * 16, codes
    assert peak[0] == 4, peak[0]


def raw_request(port: int, data: bytes, wait: float) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection; what came back and when the server closed it."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(wait)
    t0 = time.monotonic()
    got = b""
    try:
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except socket.timeout:
        return got, float("inf")
    finally:
        s.close()
    return got, time.monotonic() - t0


def test_front_door(sim_host, daemon_factory):
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    key = {"Authorization": "Bearer k3y"}
    d = daemon_factory(api_key="k3y", allowed_hosts=["gpubox.lan"],
                       limits={"max_body_bytes": 20000, "header_timeout_s": 0.5, "body_timeout_s": 0.5})
    port = int(d.url.rsplit(":", 1)[1])

    def post(path, content, headers=None):
        return httpx.post(d.url + path, content=content, headers={**key, "content-type": "application/json",
                                                                   **(headers or {})}, timeout=30, trust_env=False)

    # a cross-site "simple" request cannot switch modes: text/plain is refused before anything runs
    r = post("/switch", b'{"mode": "chat"}', {"content-type": "text/plain"})
    assert r.status_code == 415 and d.get("/models", headers=key).json()["mode"] == "rag"
    assert post("/v1/chat/completions", b'{"model": "doc"}', {"content-type": "text/plain"}).status_code == 415
    # a foreign Origin is refused; the daemon's own origin is fine
    r = post("/switch", b'{"mode": "chat"}', {"origin": "http://evil.example"})
    assert r.status_code == 403 and "evil.example" in r.json()["error"]["message"]
    assert post("/switch", b'{"mode": "rag"}', {"origin": f"http://127.0.0.1:{port}"}).status_code == 200
    assert post("/switch", b'{"mode": "rag"}', {"origin": "null"}).status_code == 403
    # DNS rebinding: a Host that is not a name of this daemon is refused, everywhere (but a
    # loopback name, the bound address and --allowed-host names are fine)
    for host, code in (("evil.example", 421), (f"evil.example:{port}", 421), (f"localhost:{port}", 200),
                       (f"gpubox.lan:{port}", 200), ("GPUBOX.lan", 200)):
        assert d.get("/models", headers={**key, "host": host}).status_code == code, host
    assert d.get("/health", headers={"host": "evil.example"}).status_code == 421
    # a non-ASCII Authorization header is a wrong key, not a crash
    r = httpx.get(d.url + "/models", headers={"Authorization": b"Bearer \xff\xfe"}, trust_env=False)
    assert r.status_code == 401
    r = httpx.post(d.url + "/v1/chat/completions", content=b'{"model": "doc"}', trust_env=False,
                   headers={"Authorization": b"Bearer k\xe9y", "content-type": "application/json"})
    assert r.status_code == 401
    # JSON nested past any parser's depth: 400 on both kinds of route
    deep = b"[" * 5000 + b"]" * 5000
    assert post("/v1/chat/completions", deep).status_code == 400
    assert post("/switch", deep).status_code == 400
    deep_obj = b'{"model": "emb", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert post("/v1/chat/completions", deep_obj).status_code == 400
    # a body over the limit: 413, declared or streamed (chunked, no length)
    big = json.dumps({"model": "doc", "messages": [{"role": "user", "content": "x" * 30000}]}).encode()
    assert post("/v1/chat/completions", big).status_code == 413
    assert post("/v1/chat/completions", iter([big[:10000], big[10000:]])).status_code == 413
    # a huge model name is not echoed back whole
    r = post("/v1/chat/completions", json.dumps({"model": "m" * 15000}).encode())
    assert r.status_code == 404 and len(r.content) < 2000 and "15002 characters" in r.json()["error"]["message"]
    # the daemon still serves
    r = post("/v1/chat/completions", json.dumps({"model": "doc", "messages": []}).encode())
    assert r.status_code == 200
    # a request head that trickles in is cut off after the head timeout; so is a body
    got, after = raw_request(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", 5)
    assert got.startswith(b"HTTP/1.1 408") and after < 3, (got, after)
    got, after = raw_request(port, b"", 5)  # connected, and nothing sent at all
    assert got == b"" and after < 3, after
    got, after = raw_request(port, b"POST /switch HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k3y\r\n"
                                   b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mo", 5)
    assert got.startswith(b"HTTP/1.1 408") and after < 3, (got, after)


def test_a_dead_services_requests_wait_for_its_restart(sim_host, daemon_factory):
    """Killed between two observations (reconcile far away): its requests are not 502s, they wait
    while the daemon notices and restarts it."""
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    d = daemon_factory(reconcile_s=60)
    assert d.chat("doc").status_code == 200
    pid = d.manager.seen.services["doc"].unit.main_pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}/status") or "zombie" in open(f"/proc/{pid}/status").read(), 2)
    rs = d.chats_at_once("doc", 6)
    assert [r.status_code for r in rs] == [200] * 6, [r.text for r in rs]
    assert d.manager.seen.services["doc"].unit.main_pid not in (None, pid)


def test_reload_with_a_broken_catalog_is_refused_and_the_old_one_stays(sim_host, daemon_factory):
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    d = daemon_factory()
    p = next((sim_host.root / "presets").rglob("doc.yaml"))
    good = p.read_text()
    p.write_text(good.replace("vram_mb: 5000", "vram_mb: lots"))
    (sim_host.root / "modes" / "odd.yaml").write_text("id: odd\nname: odd\nservices: [nosuch]\n")
    r = d.post("/reload", {})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert "the catalog in force stays" in err["message"]
    assert any("doc.yaml:" in line and "vram_mb" in line for line in err["problems"]), err["problems"]
    assert any("odd.yaml:" in line and "nosuch" in line for line in err["problems"]), err["problems"]
    # the old catalog is in force: doc is served, 'odd' is unknown
    assert d.chat("doc").status_code == 200
    assert d.post("/switch", {"mode": "odd"}).status_code == 404
    p.write_text(good)
    (sim_host.root / "modes" / "odd.yaml").unlink()
    assert d.post("/reload", {}).status_code == 200


def test_idle_clock_starts_at_wake_and_verify_accepts_an_idle_sleeper(sim_host, daemon_factory):
    from conftest import run_cli

    (sim_host.root / "modes" / "idle.yaml").write_text(
        "id: idle\nname: idle\nservices:\n  - id: emb\n    sleep_on_idle: 3\n  - doc\n")
    assert sim_host.inv("mode.switch", "--name", "idle")[0] == 0
    d = daemon_factory(idle_check_s=0.1, reconcile_s=0.3)
    assert d.chat("emb").status_code == 200
    assert wait_for(lambda: d.states()["emb"] == "sleeping", 8), d.states()
    # asleep by design: the mode is as it should be
    code, out, err = run_cli(["mode.verify", "--json"])
    assert code == 0 and json.loads(out)["ok"] is True, out + err
    # a switch into the mode wakes it; it stays awake for its idle time, counted from the wake
    r = d.post("/switch", {"mode": "idle"})
    assert r.status_code == 200 and d.states()["emb"] == "active", r.text
    woke = time.monotonic()
    while time.monotonic() - woke < 2.0:
        assert d.states()["emb"] == "active", f"slept again {time.monotonic() - woke:.1f}s after the wake"
        time.sleep(0.1)
    assert wait_for(lambda: d.states()["emb"] == "sleeping", 5)
    # a service of the mode that is stopped is still a problem
    assert sim_host.inv("service.stop", "--service-id", "doc")[0] == 0
    code, out, _ = run_cli(["mode.verify", "--json"])
    assert code == 1 and json.loads(out)["problems"] == {"doc": "stopped"}


def test_router_serve_logs_one_line_per_action(sim_host, tmp_path):
    """`inv router.serve` as a process: plain lines (no colour) for listening, switches, refusals
    and a refused reload (SIGHUP with a broken catalog, which leaves the old one in force)."""
    import subprocess
    import sys

    from conftest import REPO, free_ports, run_cli

    code, _, err = run_cli(["router.serve", "--log-level", "loud"])
    assert code == 2 and "--log-level loud" in err
    code, _, err = run_cli(["router.serve", "--bind", "0.0.0.0", "--api-key", " "])
    assert code == 2 and "the API key from --api-key is blank" in err  # a blank key is refused, never "no key"
    code, _, err = run_cli(["router.serve", "--bind", "0.0.0.0"])
    assert code == 2 and "without an API key" in err
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    port = free_ports(1)[0]
    errlog = open(tmp_path / "stderr", "w+")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from gpumod_tasks.program import main; sys.exit(main())",
                             "router.serve", "--port", str(port)], env=env, cwd=str(REPO),
                            stdout=subprocess.DEVNULL, stderr=errlog)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _up(url) or proc.poll() is not None, 30) and proc.poll() is None
        chat = {"model": "big", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(url + "/v1/chat/completions", json=chat, timeout=60, trust_env=False).status_code == 200
        assert httpx.post(url + "/v1/chat/completions", json={**chat, "model": "nosuch"}, trust_env=False).status_code == 404
        p = next((sim_host.root / "presets").rglob("doc.yaml"))
        p.write_text(p.read_text().replace("vram_mb: 5000", "vram_mb: lots"))
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload refused" in (tmp_path / "stderr").read_text(), 10)
        assert httpx.post(url + "/v1/chat/completions", json=chat, timeout=60, trust_env=False).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    errlog.seek(0)
    text = errlog.read()
    assert "\x1b[" not in text
    lines = text.splitlines()

    def one(fragment: str) -> str:
        found = [ln for ln in lines if fragment in ln]
        assert len(found) == 1, (fragment, text)
        return found[0]

    assert one(f"listening on http://127.0.0.1:{port}").split()[2] == "INFO"
    assert "big ready: switched to chat in" in one("big ready")
    assert "404 model 'nosuch' is not served here" in one("refused POST /v1/chat/completions")
    assert "catalog invalid" in one("reload refused")
    assert any("doc.yaml:" in ln and "vram_mb" in ln for ln in lines), text
    assert "ERROR" in one("reload refused") and "stopping" in lines[-1]


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_swap_path_is_imported_before_the_daemon_serves(sim_host):
    """What the first on-demand swap needs is loaded at start-up (``import_swap_path``, which
    ``router.serve`` calls before it listens): a switch in a process that has done it, with the
    daemon's own modules loaded, imports nothing more of gpumod's, tenacity or sqlite3."""
    import subprocess
    import sys

    from conftest import REPO

    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    code = (
        "import sys\n"
        "from invoke import Context\n"
        "from gpumod_tasks.cli_context import inventory, open_target\n"
        "import gpumod_tasks.daemon.app, gpumod_tasks.daemon.web\n"
        "from gpumod_tasks.daemon.model_manager import import_swap_path\n"
        "import_swap_path()\n"
        "from gpumod_tasks.switch import switch\n"
        "spec = inventory().hosts['local']\n"
        "with open_target(Context(), spec) as t:\n"
        "    before = set(sys.modules)\n"
        "    out = switch(t, 'chat')\n"
        "new = sorted(m for m in set(sys.modules) - before if m.startswith(('gpumod_tasks', 'tenacity', 'sqlite3')))\n"
        "print('STEPS', len(out.plan.steps), 'NEW', ','.join(new))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=sim_host.root, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("STEPS"))
    steps, new = line.split(" NEW ")
    assert int(steps.split()[1]) > 0, "a real switch ran"
    assert new.strip() == "", new
