"""A CLI switch on a box whose router daemon is serving drains through the daemon: the daemon
registers itself in the state dir (router.json, 0600), the CLI's run asks it (POST /drain) to
hold new requests for the leaving services and to let the ones in flight finish, and only then
stops or sleeps them. Without the registration the same switch cuts the stream off."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import REPO, free_ports, run_cli, wait_for
from test_router_daemon import set_sim

KEY = "drain-test-key-0123456789"
WORDS = "w0 w1 w2 w3 w4 w5"  # the stand-in answers with these, one chunk each, 0.4 s apart


@pytest.fixture
def serving(sim_host, tmp_path):
    """``router.serve`` as its own process (the key on its command line), in mode rag, doc slow to stream."""
    set_sim(sim_host, "doc", stream_delay_s=0.4)
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    port = free_ports(1)[0]
    errlog = open(tmp_path / "daemon.err", "w+")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from gpumod_tasks.program import main; sys.exit(main())",
                             "router.serve", "--port", str(port), "--api-key", KEY], env=env, cwd=str(REPO),
                            stdout=subprocess.DEVNULL, stderr=errlog)
    url = f"http://127.0.0.1:{port}"
    reg = sim_host.state / "router.json"
    try:
        assert wait_for(lambda: reg.exists() and _up(url) or proc.poll() is not None, 30) and proc.poll() is None
        yield url, reg, proc, tmp_path / "daemon.err"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        errlog.close()


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def stream_in_thread(url: str, out: dict) -> threading.Thread:
    def run():
        body = {"model": "doc", "stream": True, "messages": [{"role": "user", "content": WORDS}]}
        try:
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60, trust_env=False,
                              headers={"Authorization": f"Bearer {KEY}"}) as r:
                out["status"] = r.status_code
                for ln in r.iter_lines():
                    if ln == "data: [DONE]":
                        out["done"] = True
                    elif ln.startswith("data: {"):
                        ch = json.loads(ln[6:])["choices"][0]
                        out.setdefault("words", []).append(ch["delta"].get("content", "").strip())
                        if ch["finish_reason"]:
                            out["finish"] = ch["finish_reason"]
        except httpx.HTTPError as exc:
            out["error"] = repr(exc)
        out["ended_at"] = time.monotonic()

    th = threading.Thread(target=run)
    th.start()
    assert wait_for(lambda: len(out.get("words", [])) >= 2, 10), out  # the answer is under way
    return th


def doc_state(sim_host) -> str:
    code, out, err = sim_host.inv("service.status", "--service-id", "doc", "--json")
    assert code == 0, err
    return json.loads(out)["state"]


def test_a_cli_switch_drains_the_daemons_stream_before_stopping_its_service(sim_host, serving):
    url, reg, proc, errfile = serving
    # the registration: the daemon's pid and port, readable by its user only (it holds the key)
    assert (reg.stat().st_mode & 0o777) == 0o600
    data = json.loads(reg.read_text())
    assert data["pid"] == proc.pid and data["port"] == int(url.rsplit(":", 1)[1]) and data["api_key"] == KEY
    # a key on the daemon's command line is visible in `ps`: it says so, once, without the key
    assert wait_for(lambda: "visible to other users in `ps`" in errfile.read_text(), 5)
    assert KEY not in errfile.read_text()
    out: dict = {}
    th = stream_in_thread(url, out)
    code, stdout, stderr = run_cli(["mode.switch", "--name", "blank"])  # stops doc and emb
    switched_at = time.monotonic()
    th.join(30)
    assert code == 0, stdout + stderr
    # the stream was answered whole: every chunk, its finish, [DONE] ...
    assert out.get("status") == 200 and "error" not in out, out
    assert out.get("finish") == "stop" and out.get("done"), out
    assert [w for w in out["words"] if w.startswith("w")] == WORDS.split(), out
    # ... and the switch went on only after it ended
    assert out["ended_at"] <= switched_at
    assert "drained doc (1)" in stdout + stderr
    assert "draining doc (1 in flight) for another run on the box" in errfile.read_text()
    assert doc_state(sim_host) == "stopped"
    # the hold ended with the run: the next request for doc is served (the daemon starts it again)
    r = httpx.post(url + "/v1/chat/completions", json={"model": "doc", "messages": [{"role": "user", "content": "hi"}]},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60, trust_env=False)
    assert r.status_code == 200, r.text
    # at exit the daemon removes its registration
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    assert not reg.exists()


def test_without_the_registration_the_same_switch_cuts_the_stream(sim_host, serving):
    url, reg, proc, _ = serving
    reg.unlink()  # a daemon the CLI cannot find: nothing drains
    out: dict = {}
    th = stream_in_thread(url, out)
    code, stdout, stderr = run_cli(["mode.switch", "--name", "blank"])
    th.join(30)
    assert code == 0, stdout + stderr
    assert not (out.get("finish") == "stop" and out.get("done")), out
    assert len([w for w in out.get("words", []) if w.startswith("w")]) < len(WORDS.split()), out


def test_a_stale_registration_is_ignored(sim_host, serving):
    url, reg, proc, _ = serving
    proc.send_signal(signal.SIGKILL)  # no chance to remove its file
    proc.wait(timeout=10)
    assert reg.exists()
    code, stdout, stderr = run_cli(["mode.switch", "--name", "blank"])
    assert code == 0 and "router daemon" not in stdout + stderr, stdout + stderr


def test_requests_arriving_during_the_hold_queue_and_are_served_after_the_run(sim_host, serving):
    """A CLI switch to a mode where doc sleeps: while the daemon drains doc's stream for it, doc
    shows as switching and a new request for it waits in the daemon's queue (it never reaches a
    server about to sleep); the stream completes, doc sleeps, and then the queued request is
    served (the daemon wakes doc for it)."""
    url, reg, proc, errfile = serving
    out: dict = {}
    th = stream_in_thread(url, out)
    res: dict = {}

    def cli():
        res["cli"] = run_cli(["mode.switch", "--name", "code"])  # doc sleeps, router starts
        res["cli_done"] = time.monotonic()

    ct = threading.Thread(target=cli)
    ct.start()
    auth = {"Authorization": f"Bearer {KEY}"}
    assert wait_for(lambda: "draining doc" in errfile.read_text(), 10)
    models = httpx.get(url + "/models", headers=auth, timeout=10, trust_env=False).json()["models"]
    assert {m["id"]: m["state"] for m in models}["doc"] == "switching"
    r = httpx.post(url + "/v1/chat/completions", json={"model": "doc", "messages": [{"role": "user", "content": "hi"}]},
                   headers=auth, timeout=60, trust_env=False)
    answered = time.monotonic()
    ct.join(60)
    th.join(30)
    code, stdout, stderr = res["cli"]
    assert code == 0, stdout + stderr
    assert out.get("finish") == "stop" and out.get("done") and out["ended_at"] <= res["cli_done"], out
    assert r.status_code == 200, r.text
    assert answered >= res["cli_done"]  # it waited for the run to end
    assert "sleep doc" in stdout, stdout  # the CLI's plan slept it ...
    assert wait_for(lambda: "doc ready:" in errfile.read_text(), 5)  # ... and the daemon made it ready again for the request


def test_the_registration_is_read_strictly():
    from gpumod_tasks.daemon.announce import DaemonLink, parse, render

    link = parse(render(123, 8787, "0.0.0.0", api_key="s3cret"))
    assert link == DaemonLink(123, 8787, "127.0.0.1", "s3cret") and "s3cret" not in repr(link)
    assert parse(render(5, 80, "::", api_key="k", api_key_file="/etc/key")) == DaemonLink(5, 80, "::1", "", "/etc/key")
    assert link.url("http://127.0.0.1:8787") == "http://127.0.0.1:8787"
    assert parse(render(5, 80, "10.1.2.3")).url("http://127.0.0.1:80") == "http://10.1.2.3:80"
    for bad in (None, "", "{", "[]", '{"pid": "1", "port": 80}', '{"pid": 1, "port": 0}', '{"pid": 1, "port": 80, "api_key": 3}',
                '{"pid": true, "port": 80}'):
        assert parse(bad) is None, bad


def test_drain_routes_refuse_bad_bodies(sim_host, serving):
    url, *_ = serving
    auth = {"Authorization": f"Bearer {KEY}"}
    for body in ({}, {"services": "doc"}, {"services": [1]}, {"services": ["doc"], "hold_s": 0}, {"services": ["doc"], "hold_s": "x"}):
        assert httpx.post(url + "/drain", json=body, headers=auth, timeout=10, trust_env=False).status_code == 400, body
    assert httpx.post(url + "/drain", json={"services": ["doc"]}, timeout=10, trust_env=False).status_code == 401
    r = httpx.post(url + "/drain", json={"services": ["doc", "nosuch"], "hold_s": 5}, headers=auth, timeout=10, trust_env=False)
    assert r.status_code == 200 and r.json()["services"] == ["doc"] and r.json()["in_flight"] == {"doc": 0}
    states = {m["id"]: m["state"] for m in httpx.get(url + "/models", headers=auth, trust_env=False).json()["models"]}
    assert states["doc"] == "switching"
    assert httpx.post(url + "/drain/end", json={"services": ["doc"]}, headers=auth, timeout=10, trust_env=False).status_code == 200
    states = {m["id"]: m["state"] for m in httpx.get(url + "/models", headers=auth, trust_env=False).json()["models"]}
    assert states["doc"] == "active"
