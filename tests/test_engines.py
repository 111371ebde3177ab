"""The engines: each driver has one, probing never raises on what a port answers, vLLM sleeps with
mode=wait (falling back for old servers) under a bounded timeout, and the stand-in tells abort,
wait and keep apart."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from test_sim import StandIn

from gpumod_tasks import engines
from gpumod_tasks.catalog.model import Driver, Preset, SleepMode
from gpumod_tasks.engines import Health, caps
from gpumod_tasks.engines.llamacpp import parse_router_models
from gpumod_tasks.engines.vllm import parse_is_sleeping
from gpumod_tasks.errors import HostError
from gpumod_tasks.host.local import LocalHost
from gpumod_tasks.inventory import HostSpec
from gpumod_tasks.sim.ledger import Ledger

REPO = Path(__file__).resolve().parent.parent


def test_every_driver_has_an_engine_and_a_caps_row():
    for d in Driver:
        e = engines.engine_for(d)
        assert e.name == d.value and engines.engine_for(d.value) is e
        assert set(e.sleep_modes) == set(caps.SLEEP_MODES[d.value]) and "none" in e.sleep_modes
    p = Preset(id="r", name="r", driver=Driver.LLAMACPP, port=1, vram_mb=10, sleep_mode=SleepMode.ROUTER,
               supports_sleep=True, model_path="/m/qwen-7b.gguf", unit_vars={"served_model_name": "chat"})
    assert engines.upstream_name(p) == "qwen-7b"  # a router calls its model by its models-dir entry
    assert engines.upstream_name(Preset(id="v", name="v", driver=Driver.VLLM, port=1, vram_mb=1,
                                        unit_vars={"served_model_name": "chat"})) == "chat"
    assert p.residual_mb == 0 and Preset(id="v", name="v", driver=Driver.VLLM, port=1, vram_mb=9000).residual_mb == 512


def test_importing_engines_loads_no_http_client_and_no_engine_code():
    code = ("import sys; import gpumod_tasks.catalog, gpumod_tasks.engines; "
            "bad = [m for m in ('httpx', 'gpumod_tasks.engines.vllm', 'gpumod_tasks.host.local') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stdout + r.stderr


# -- parsers on captured text --------------------------------------------------------------------

ROUTER_MODELS = ('{"data":[{"id":"qwen","aliases":["q"],"object":"model","status":{"value":"loaded","args":[]}},'
                 '{"id":"gemma","status":{"value":"unloaded","failed":true,"exit_code":1}}],"object":"list"}')


def test_parsers_read_real_answers():
    assert parse_is_sleeping('{"is_sleeping":true}') is True
    assert parse_is_sleeping('{"is_sleeping": false}') is False
    m = parse_router_models(ROUTER_MODELS)
    assert m["q"] is m["qwen"] and m["gemma"]["status"]["failed"] is True


@pytest.mark.parametrize("text", ["[]", '{"data": [1]}', "not json", '{"data": {"id": "x"}}', '{"data": [{"id": 5}]}',
                                  "null", '"x"', '{"data": [{"id": "x", "aliases": 7}], "extra": 1}x'])
def test_router_parser_refuses_odd_shapes_with_value_error(text):
    with pytest.raises(ValueError):
        parse_router_models(text)


@pytest.mark.parametrize("text", ["[]", '{"data": [1]}', "no", '{"is_sleeping": "yes"}', '{"is_sleeping": 1}', "{}", "null"])
def test_is_sleeping_parser_refuses_odd_shapes_with_value_error(text):
    with pytest.raises(ValueError):
        parse_is_sleeping(text)


class OddServer:
    """A process on a service's port that answers every GET with one fixed body (status 200)."""

    def __init__(self, body: str):
        outer = self
        self.body = body

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                data = outer.body.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.mark.parametrize("body", ["[]", '{"data": [1]}', "<html>hi</html>", '{"is_sleeping": "no", "data": "x"}', "\xff"])
def test_probe_of_an_odd_port_is_bad_never_an_exception(body):
    srv = OddServer(body)
    host = LocalHost(HostSpec(name="t"))
    try:
        router = Preset(id="r", name="r", driver=Driver.LLAMACPP, port=srv.port, vram_mb=1, sleep_mode=SleepMode.ROUTER,
                        supports_sleep=True, model_path="/m/x.gguf")
        vllm = Preset(id="v", name="v", driver=Driver.VLLM, port=srv.port, vram_mb=1, sleep_mode=SleepMode.L1, supports_sleep=True)
        custom = Preset(id="f", name="f", driver=Driver.FASTAPI, port=srv.port, vram_mb=1, sleep_mode=SleepMode.L1,
                        supports_sleep=True, health_endpoint="/healthz")
        for p in (router, vllm, custom):
            pr = engines.probe(host, p)
            assert pr.health is Health.BAD and pr.detail, (p.id, pr)
    finally:
        srv.close()
        host.close()


# -- vLLM sleep against the stand-in ----------------------------------------------------------------


class VllmStandIn(StandIn):
    def __init__(self, tmp_path: Path, *args: str):
        from conftest import free_ports

        self.port = free_ports(1)[0]
        super().__init__(tmp_path, self.port, "--flavor", "vllm", "--served-model-name", "m", "--vram-mb", "1000",
                         "--sleep-vram-mb", "100", "--enable-sleep-mode", "--load-s", "0", "--wake-l1-s", "0", *args,
                         env={"VLLM_SERVER_DEV_MODE": "1"})
        self.c.timeout = httpx.Timeout(30)
        self.wait_listening()
        self.preset = Preset(id="m", name="m", driver=Driver.VLLM, port=self.port, vram_mb=1000, sleep_mode=SleepMode.L1,
                             supports_sleep=True, unit_vars={"served_model_name": "m"})

    def stream(self, out: dict) -> threading.Thread:
        """A streamed chat in a thread: ``out`` gets its content chunks and finish reasons."""
        def run():
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "one two three four five six"}]}
            import json

            try:
                with self.c.stream("POST", self.url + "/v1/chat/completions", json=body) as r:
                    for ln in r.iter_lines():
                        if ln.startswith("data: {"):
                            ch = json.loads(ln[6:])["choices"][0]
                            out.setdefault("words", []).append(ch["delta"].get("content", ""))
                            if ch["finish_reason"]:
                                out["finish"] = ch["finish_reason"]
            except httpx.HTTPError as exc:
                out["error"] = exc
            out["done_at"] = time.monotonic()

        th = threading.Thread(target=run)
        th.start()
        time.sleep(0.35)  # the stream is under way
        return th


@pytest.fixture
def gpu(tmp_path):
    return Ledger.create(tmp_path / "gpu0.json", name="G", total_mb=24000, release_lag_s=0)


def test_abort_cuts_a_stream_off_while_gpumods_wait_sleep_lets_it_finish(tmp_path, gpu):
    s = VllmStandIn(tmp_path, "--stream-delay-s", "0.15")
    host = LocalHost(HostSpec(name="t"))
    try:
        # vLLM's default (mode=abort): the stream in flight ends at once, unfinished
        out: dict = {}
        th = s.stream(out)
        assert s.c.post(s.url + "/sleep", params={"level": 1}).status_code == 200
        th.join(10)
        assert out["finish"] == "abort" and "six" not in "".join(out["words"])
        s.c.post(s.url + "/wake_up")
        # gpumod's sleep (mode=wait): the stream finishes first, then the engine sleeps
        out = {}
        th = s.stream(out)
        engines.sleep(host, s.preset, 1)
        slept_at = time.monotonic()
        th.join(10)
        assert out["finish"] == "stop" and "six" in "".join(out["words"])
        assert out["done_at"] <= slept_at + 0.05  # the sleep returned only after the stream ended
        assert engines.probe(host, s.preset).sleeping
        assert gpu.snapshot().used_mb == 100
        engines.wake(host, s.preset, 1)
        assert not engines.probe(host, s.preset).sleeping
    finally:
        s.close()
        host.close()


def test_keep_freezes_a_stream_until_wake(tmp_path, gpu):
    s = VllmStandIn(tmp_path, "--stream-delay-s", "0.1")
    try:
        out: dict = {}
        th = s.stream(out)
        assert s.c.post(s.url + "/sleep", params={"level": 1, "mode": "keep"}).status_code == 200
        n = len(out.get("words", []))
        time.sleep(0.5)
        assert th.is_alive() and len(out.get("words", [])) <= n + 1  # frozen
        s.c.post(s.url + "/wake_up")
        th.join(10)
        assert out["finish"] == "stop" and "six" in "".join(out["words"])
        assert s.c.post(s.url + "/sleep", params={"mode": "later"}).status_code == 400
    finally:
        s.close()


def test_sleep_falls_back_for_a_server_without_pause_modes(tmp_path, gpu):
    s = VllmStandIn(tmp_path, "--vllm-version", "0.16.0")
    host = LocalHost(HostSpec(name="t"))
    try:
        assert s.c.post(s.url + "/sleep", params={"level": 1, "mode": "wait"}).status_code == 400  # it refuses the parameter
        s.c.post(s.url + "/wake_up")
        engines.sleep(host, s.preset, 1)
        assert engines.probe(host, s.preset).sleeping
    finally:
        s.close()
        host.close()


def test_sleep_is_bounded_by_its_timeout(tmp_path, gpu):
    # a stream that would take ~10 s keeps a wait-mode sleep draining; the call gives up at the timeout
    s = VllmStandIn(tmp_path, "--stream-delay-s", "2")
    host = LocalHost(HostSpec(name="t", vars={"sleep_timeout_s": 30}))
    try:
        out: dict = {}
        th = s.stream(out)
        slow = dataclasses.replace(s.preset, unit_vars={"sleep_timeout_s": 0.5})  # the preset's wins over the host's
        t0 = time.monotonic()
        with pytest.raises(HostError, match="timed out after 0.5s"):
            engines.sleep(host, slow, 1)
        assert time.monotonic() - t0 < 3
        s.proc.terminate()
        th.join(10)
    finally:
        s.close()
        host.close()


def test_requests_arriving_during_a_drain_wait_for_the_wake(tmp_path, gpu):
    s = VllmStandIn(tmp_path, "--stream-delay-s", "0.15")
    host = LocalHost(HostSpec(name="t"))
    try:
        out: dict = {}
        th = s.stream(out)
        sleeper = threading.Thread(target=engines.sleep, args=(host, s.preset, 1))
        sleeper.start()
        time.sleep(0.2)  # the drain is under way: the stream still runs, the engine pauses new work
        late: dict = {}
        newcomer = threading.Thread(target=lambda: late.update(r=s.c.post(s.url + "/v1/completions", json={"model": "m", "prompt": "x"}),
                                                                 at=time.monotonic()))
        newcomer.start()
        sleeper.join(10)
        th.join(10)
        assert out["finish"] == "stop"
        time.sleep(0.3)
        assert newcomer.is_alive()  # queued, not run between the drain and the sleep
        woke_at = time.monotonic()
        engines.wake(host, s.preset, 1)
        newcomer.join(10)
        assert late["r"].status_code == 200 and late["at"] >= woke_at
    finally:
        s.close()
        host.close()
