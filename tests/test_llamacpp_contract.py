"""One contract for llama.cpp's router, run against the real `llama-server` and the stand-in.

The same router flags start either (``--host --port --models-dir --models-max
--no-models-autoload``); only the program in front differs.  Where the real server surprised us,
the case is here and the stand-in follows it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO, free_ports

MODELS = ["alpha", "beta", "gamma"]


class Router:
    def __init__(self, kind: str, argv: list[str], port: int, log: Path):
        self.kind, self.port = kind, port
        self.log = log
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "PYTHONPATH": str(REPO)})
        # a fresh connection per request: the real router may close a kept-alive connection after a
        # proxied answer, and a reused one then reads "Server disconnected" (seen under load)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False,
                                 limits=httpx.Limits(max_keepalive_connections=0))
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.http.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, f"{kind} router exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{kind} router did not come up"
            time.sleep(0.05)

    def status(self) -> dict[str, str]:
        return {m["id"]: m["status"]["value"] for m in self.http.get("/models").json()["data"]}

    def wait_status(self, model: str, want: str, timeout: float = 20) -> list[str]:
        """Poll until ``model`` reaches ``want``; return the distinct statuses seen on the way."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()[model]
            if not seen or seen[-1] != st:
                seen.append(st)
            if st == want:
                return seen
            assert time.monotonic() < deadline, f"{model}: {seen}, never {want}"
            time.sleep(0.01)

    def load(self, model: str) -> httpx.Response:
        return self.http.post("/models/load", json={"model": model})

    def chat(self, model: str | None, **params) -> httpx.Response:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        if model is not None:
            body["model"] = model
        return self.http.post("/v1/chat/completions", json=body, params=params)

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(params=["real", "standin"])
def router_factory(request, tmp_path, tiny_models):
    made: list[Router] = []

    def make(*flags: str) -> Router:
        port = free_ports(1)[0]
        common = ["--host", "127.0.0.1", "--port", str(port), "--models-dir", str(tiny_models), *flags]
        if request.param == "real":
            prog = [str(request.getfixturevalue("llama_server_bin"))]
        else:
            from gpumod_tasks.sim.ledger import Ledger

            sim = tmp_path / "sim"
            Ledger.create(sim / "gpu0.json", name="NVIDIA GeForce RTX 4090", total_mb=24564, release_lag_s=0.05)
            prog = [sys.executable, "-m", "gpumod_tasks.sim.server", "--flavor", "llamacpp", "--sim-dir", str(sim),
                    "--load-s", "0.3"]
        r = Router(request.param, [*prog, *common], port, tmp_path / f"router-{len(made)}.log")
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def router(router_factory):
    return router_factory("--models-max", "2", "--no-models-autoload")


def test_models_entry_shape(router):
    data = router.http.get("/models").json()
    assert data["object"] == "list"
    assert sorted(m["id"] for m in data["data"]) == MODELS
    for m in data["data"]:
        assert m["object"] == "model" and m["owned_by"] == "llamacpp"
        assert isinstance(m["aliases"], list) and isinstance(m["tags"], list)
        assert m["status"]["value"] == "unloaded"
        args = m["status"]["args"]  # always present: the child's argv, router-only flags stripped
        assert args[args.index("--model") + 1].endswith(f"/{m['id']}.gguf") and "--models-dir" not in args
        assert m["source"] == "models_dir"
    assert [m["id"] for m in router.http.get("/v1/models").json()["data"]] == [m["id"] for m in data["data"]]


def test_load_answers_at_spawn_then_loading_to_loaded(router):
    assert router.status()["alpha"] == "unloaded"
    r = router.load("alpha")
    assert r.status_code == 200 and r.json() == {"success": True}
    # the answer comes before the model is ready: gpumod must wait for "loaded"
    seen = router.wait_status("alpha", "loaded")
    assert seen[0] == "loading" and seen[-1] == "loaded"
    assert router.chat("alpha").status_code == 200


def test_health_is_200_whatever_the_models_do(router):
    assert router.http.get("/health").json() == {"status": "ok"}
    router.load("alpha")
    assert router.http.get("/health").status_code == 200  # while loading
    router.wait_status("alpha", "loaded")
    assert router.http.get("/health").status_code == 200


def test_error_cases(router):
    router.load("alpha")
    router.wait_status("alpha", "loaded")
    r = router.load("alpha")
    assert r.status_code == 400 and r.json()["error"]["message"] == "model is already running"
    r = router.load("nosuch")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = router.http.post("/models/unload", json={"model": "nosuch"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "model is not found"
    r = router.http.post("/models/unload", json={"model": "beta"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "model is not running"
    r = router.chat(None)
    assert r.status_code == 400 and r.json()["error"]["message"] == "model name is missing from the request"
    r = router.chat("nosuch")
    assert r.status_code == 400 and r.json()["error"]["message"] == "model 'nosuch' not found"
    r = router.chat("beta")  # autoload is off
    assert r.status_code == 400 and r.json()["error"]["message"] == "model is not loaded"
    # surprise from the real build: a body that is not JSON is a 500 server_error, not a 400
    r = router.http.post("/models/load", content=b"garbage", headers={"Content-Type": "application/json"})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"


def test_unload_answers_at_once_then_unloaded(router):
    router.load("alpha")
    router.wait_status("alpha", "loaded")
    r = router.http.post("/models/unload", json={"model": "alpha"})
    assert r.status_code == 200 and r.json() == {"success": True}
    router.wait_status("alpha", "unloaded", timeout=15)


def test_autoload_per_request_and_by_default(router, router_factory):
    r = router.chat("beta", autoload="true")
    assert r.status_code == 200 and r.json()["model"] == "beta"
    assert router.status()["beta"] == "loaded"
    auto = router_factory("--models-max", "2")  # autoload is the default
    assert auto.http.get("/props").json()["models_autoload"] is True
    r = auto.chat("gamma")
    assert r.status_code == 200
    assert auto.status()["gamma"] == "loaded"


def test_models_max_evicts_the_least_recently_used_idle_model(router):
    for m in ("alpha", "beta"):
        router.load(m)
        router.wait_status(m, "loaded")
    assert router.chat("alpha").status_code == 200  # alpha is now more recent than beta
    assert router.load("gamma").status_code == 200
    router.wait_status("gamma", "loaded")
    router.wait_status("beta", "unloaded", timeout=15)  # the evicted child is reaped, then shows unloaded
    st = router.status()
    assert st == {"alpha": "loaded", "beta": "unloaded", "gamma": "loaded"}
    assert router.http.get("/props").json()["max_instances"] == 2
