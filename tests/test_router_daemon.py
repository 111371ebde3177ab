"""The router daemon over real HTTP against the simulator's stand-ins."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx


def set_sim(sim_host, sid: str, **sim) -> None:
    """Give one preset of the test catalog its own stand-in delays."""
    p = next((sim_host.root / "presets").rglob(f"{sid}.yaml"))
    lines = [ln for ln in p.read_text().splitlines() if not ln.startswith("sim:")]
    p.write_text("\n".join(lines) + "\nsim: {" + ", ".join(f"{k}: {v}" for k, v in sim.items()) + "}\n")


def test_routes_by_model_wakes_in_mode_and_switches_modes(sim_host, daemon_factory):
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    d = daemon_factory(reconcile_s=0.3)
    assert d.get("/health").json()["status"] == "ok"
    r = d.chat("doc")
    assert r.status_code == 200 and r.json()["model"] == "doc"
    # one Date and one Server header: the router's, not the service's as well
    assert len(r.headers.get_list("date")) == 1 and r.headers.get_list("server") == ["uvicorn"]
    listed = {m["id"]: m for m in d.get("/v1/models").json()["data"]}
    assert listed["big"]["state"] == "stopped" and listed["doc"]["ready"] is True
    # "big" is in no current service: the daemon switches to the one mode that has it
    r = d.chat("big")
    assert r.status_code == 200 and r.json()["model"] == "big"
    assert d.get("/models").json()["mode"] == "chat"
    st = d.states()
    assert st["big"] == "active" and st["emb"] == "active" and st["doc"] == "sleeping"
    # a service of the current mode put to sleep (here behind the daemon's back, so a request may
    # reach the sleeping server and wait there, as vLLM holds it) is woken alone, with no mode switch
    assert sim_host.inv("service.sleep", "--service-id", "emb")[0] == 0
    r = d.chat("emb")
    assert r.status_code == 200 and d.get("/models").json()["mode"] == "chat" and d.states()["big"] == "active"
    # the manager API: switch by mode and by model; unknown names are 404 with the known ones
    r = d.post("/switch", {"mode": "rag"})
    assert r.status_code == 200 and r.json()["ok"] and r.json()["mode"] == "rag"
    r = d.post("/switch", {"model_id": "router"})
    assert r.status_code == 200 and r.json()["mode"] == "code" and d.states()["router"] == "active"
    r = d.chat("nosuch")
    assert r.status_code == 404 and "known:" in r.json()["error"]["message"]
    assert d.post("/switch", {"mode": "nosuch"}).status_code == 404
    assert d.post("/v1/chat/completions", {"messages": []}).status_code == 400


def test_sse_passes_through_chunk_by_chunk(sim_host, daemon_factory):
    set_sim(sim_host, "doc", stream_delay_s=0.15)
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    d = daemon_factory()
    arrivals = []
    body = {"model": "doc", "stream": True, "messages": [{"role": "user", "content": "one two three four five"}]}
    with httpx.stream("POST", d.url + "/v1/chat/completions", json=body, timeout=30, trust_env=False) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        t0 = time.monotonic()
        for line in r.iter_lines():
            if line.startswith("data:"):
                arrivals.append((time.monotonic() - t0, line))
    assert arrivals[-1][1] == "data: [DONE]"
    assert len(arrivals) >= 4
    # not buffered: the first chunk arrived long before the last
    assert arrivals[-1][0] - arrivals[0][0] > 0.3, arrivals


def test_requests_queue_during_a_switch_one_switch_for_all(sim_host, daemon_factory):
    set_sim(sim_host, "big", load_s=1.0)
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    d = daemon_factory()

    rs = d.chats_at_once("big", 8)
    assert [r.status_code for r in rs] == [200] * 8 and {r.json()["model"] for r in rs} == {"big"}
    m = d.get("/metrics").text
    assert 'gpumod_switch_seconds_count{mode="chat"} 1.0' in m  # one switch served all eight
    assert 'gpumod_requests_total{code="200",model="big"} 8.0' in m


def test_a_model_that_stays_awake_is_not_held_up_and_timeouts_are_503(sim_host, daemon_factory):
    set_sim(sim_host, "big", load_s=2.0)
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    d = daemon_factory(request_timeout_s=0.7)
    results = {}

    def slow():
        results["big"] = d.chat("big")

    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.3)
    # emb is in both rag and chat: it stays awake through the switch and is served at once
    t0 = time.monotonic()
    r = d.chat("emb")
    assert r.status_code == 200 and time.monotonic() - t0 < 0.5
    th.join()
    r = results["big"]
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
    assert "did not become ready within 0.7s" in r.json()["error"]["message"]
    # the switch went on: big answers once it is loaded
    deadline = time.monotonic() + 10
    while d.states()["big"] != "active" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert d.chat("big").status_code == 200


def test_concurrency_limit_answers_429(sim_host, daemon_factory):
    set_sim(sim_host, "doc", infer_s=0.6)
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    d = daemon_factory(concurrency=2)

    codes = sorted(r.status_code for r in d.chats_at_once("doc", 3))
    assert codes == [200, 200, 429]


def test_idle_sleep_and_wake_on_next_request(sim_host, daemon_factory):
    (sim_host.root / "modes" / "idle.yaml").write_text("id: idle\nname: idle\nservices:\n  - id: emb\n    sleep_on_idle: 1\n  - doc\n")
    assert sim_host.inv("mode.switch", "--name", "idle")[0] == 0
    d = daemon_factory(idle_check_s=0.2, reconcile_s=0.5)
    assert d.chat("emb").status_code == 200
    deadline = time.monotonic() + 8
    while d.states()["emb"] != "sleeping" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert d.states()["emb"] == "sleeping" and d.states()["doc"] == "active"  # doc has no TTL
    r = d.chat("emb")
    assert r.status_code == 200 and d.states()["emb"] == "active"


def test_drift_reload_and_readoption(sim_host, daemon_factory):
    assert sim_host.inv("template.install-all")[0] == 0
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    d = daemon_factory(reconcile_s=0.3)
    pids = {s: d.manager.seen.services[s].unit.main_pid for s in ("emb", "doc")}
    # drift: killed behind the daemon's back -> shown stopped, restarted by the next request
    os.kill(pids["doc"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while d.states()["doc"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert d.states()["doc"] == "stopped"
    assert d.chat("doc").status_code == 200 and d.states()["doc"] == "active"
    pids["doc"] = d.manager.seen.services["doc"].unit.main_pid
    # reload: only the service whose unit changed restarts
    set_sim(sim_host, "doc", load_s=0.1)  # changes what doc's unit runs
    r = d.post("/reload", {})
    assert r.status_code == 200 and r.json()["restarted"] == ["doc"] and r.json()["units_changed"] == ["gpumod-doc.service"]
    assert d.manager.seen.services["emb"].unit.main_pid == pids["emb"]
    assert d.manager.seen.services["doc"].unit.main_pid != pids["doc"]
    # a restarted daemon adopts what runs: no restarts
    now = {s: d.manager.seen.services[s].unit.main_pid for s in ("emb", "doc")}
    d.stop()
    d2 = daemon_factory()
    assert d2.states()["emb"] == "active" and {s: d2.manager.seen.services[s].unit.main_pid for s in now} == now


def test_hung_server_is_noticed_and_restarted(sim_host, daemon_factory):
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    d = daemon_factory(reconcile_s=0.3, health_failures=2, restart_unhealthy=True)
    pid = d.manager.seen.services["doc"].unit.main_pid
    os.kill(pid, signal.SIGSTOP)  # alive but answering nothing
    try:
        deadline = time.monotonic() + 30
        while d.manager.seen.services["doc"].unit.main_pid == pid and time.monotonic() < deadline:
            time.sleep(0.2)
        assert d.manager.seen.services["doc"].unit.main_pid != pid
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert d.chat("doc").status_code == 200


def test_api_key_for_everything_but_health(sim_host, daemon_factory):
    d = daemon_factory(api_key="s3cret")
    assert d.get("/health").status_code == 200
    assert d.get("/models").status_code == 401
    assert d.get("/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_bounded_load_no_lost_or_misrouted_requests(sim_host, daemon_factory):
    """32 concurrent clients over 3 models, forced mode switches in between: every request answered
    200 by the service it named."""
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    d = daemon_factory(request_timeout_s=60)
    models = ["emb", "doc", "big"]
    per_client = 6

    async def client(i: int, c: httpx.AsyncClient) -> list[tuple[str, int, str]]:
        out = []
        for k in range(per_client):
            m = models[(i + k) % 3]
            r = await c.post(d.url + "/v1/chat/completions", json={"model": m, "messages": [{"role": "user", "content": f"{i}-{k}"}]})
            out.append((m, r.status_code, r.json().get("model", "") if r.status_code == 200 else r.text))
        return out

    async def switcher(c: httpx.AsyncClient) -> None:
        for mode in ("chat", "rag", "chat"):
            await asyncio.sleep(0.4)
            await c.post(d.url + "/switch", json={"mode": mode})

    async def run():
        async with httpx.AsyncClient(timeout=120, trust_env=False, limits=httpx.Limits(max_connections=64)) as c:
            res = await asyncio.gather(*[client(i, c) for i in range(32)], switcher(c))
            return [x for r in res[:-1] for x in r]

    results = asyncio.run(run())
    assert len(results) == 32 * per_client
    bad = [r for r in results if r[1] != 200 or r[2] != r[0]]
    assert not bad, bad[:5]


def test_alternating_models_are_grouped_one_switch_each(sim_host, daemon_factory):
    """A B A B for models in two exclusive modes: served as A A then B B, with one switch each."""
    set_sim(sim_host, "big", load_s=0.5)
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    d = daemon_factory()

    async def run():
        async with httpx.AsyncClient(timeout=60, trust_env=False) as c:
            async def one(m, delay):
                await asyncio.sleep(delay)
                r = await c.post(d.url + "/v1/chat/completions", json={"model": m, "messages": [{"role": "user", "content": m}]})
                return m, r.status_code, r.json().get("model"), time.monotonic()
            return await asyncio.gather(*[one(m, i * 0.02) for i, m in enumerate(["big", "router", "big", "router"])])

    res = asyncio.run(run())
    assert all(code == 200 and got == m for m, code, got, _ in res), res
    done = {m: sorted(t for mm, _, _, t in res if mm == m) for m in ("big", "router")}
    assert max(done["big"]) < min(done["router"])  # both big requests before either router one
    m = d.get("/metrics").text
    assert 'gpumod_switch_seconds_count{mode="chat"} 1.0' in m and 'gpumod_switch_seconds_count{mode="code"} 1.0' in m


def test_a_client_leaving_mid_stream_frees_the_model_at_once(sim_host, daemon_factory):
    set_sim(sim_host, "doc", stream_delay_s=0.3)
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    d = daemon_factory()
    words = " ".join(f"w{i}" for i in range(30))  # ~9 s of answer
    body = {"model": "doc", "stream": True, "messages": [{"role": "user", "content": words}]}
    with httpx.stream("POST", d.url + "/v1/chat/completions", json=body, timeout=30, trust_env=False) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        in_flight = {m["id"]: m["in_flight"] for m in d.get("/models").json()["models"]}
        assert in_flight["doc"] == 1
    t0 = time.monotonic()  # the client hung up after one chunk
    while {m["id"]: m["in_flight"] for m in d.get("/models").json()["models"]}["doc"] != 0:
        assert time.monotonic() - t0 < 2, "the abandoned stream still holds the model"
        time.sleep(0.05)
    # and the model still answers (the pool did not keep the cut connection)
    assert d.chat("doc").status_code == 200


def test_a_model_asked_by_any_of_its_names_reaches_the_service_under_its_own(sim_host, daemon_factory):
    # a router preset whose router calls it by its file's name, a vLLM one with its own served name
    rp = next((sim_host.root / "presets").rglob("router.yaml"))
    rp.write_text(rp.read_text() + "model_path: /models/gguf/coder-7b-q4.gguf\n")
    dp = next((sim_host.root / "presets").rglob("doc.yaml"))
    dp.write_text(dp.read_text() + "unit_vars: {served_model_name: doc-embed}\n")
    assert sim_host.inv("mode.switch", "--name", "code")[0] == 0
    d = daemon_factory()
    listed = {m["service"]: m["id"] for m in d.get("/v1/models").json()["data"]}
    assert listed["router"] == "router" and listed["doc"] == "doc-embed"
    for name in ("router", "coder-7b-q4"):  # the stand-in router, like llama.cpp's, knows only its own name
        r = d.chat(name)
        assert r.status_code == 200 and r.json()["model"] == "coder-7b-q4", r.text
    for name in ("doc", "doc-embed"):
        r = d.chat(name)
        assert r.status_code == 200 and r.json()["model"] == "doc-embed", r.text
    for name in ("nosuch-1", "nosuch-2"):
        assert d.chat(name).status_code == 404
    # metrics count by service, whatever name was asked; unknown names share one label
    m = d.get("/metrics").text
    assert 'gpumod_requests_total{code="200",model="router"} 2.0' in m
    assert 'gpumod_requests_total{code="200",model="doc"} 2.0' in m
    assert 'gpumod_requests_total{code="404",model="-"} 2.0' in m and "nosuch" not in m
