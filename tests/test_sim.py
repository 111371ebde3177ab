"""The simulated GPU for real: ledger under concurrent processes, the shim's output, stand-ins over HTTP."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from gpumod_tasks.facts.gpu import APPS_QUERY, GPU_QUERY, MARK, parse_nvidia_smi
from gpumod_tasks.sim.ledger import Ledger, OutOfMemory

REPO = Path(__file__).resolve().parent.parent


def _hammer(path: str, n: int, mb: int, barrier) -> None:  # runs in a child process
    led = Ledger(path)
    barrier.wait()
    for _ in range(n):
        led.alloc(os.getpid(), mb, "t")
    led.free(os.getpid(), None, lag_s=3600)  # freed but still charged (lag): nothing may be lost


def test_ledger_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "gpu0.json")
    Ledger.create(path, name="G", total_mb=10_000_000)
    procs, barrier = [], mp.Barrier(6)
    for _ in range(6):
        p = mp.Process(target=_hammer, args=(path, 40, 7, barrier))
        p.start()
        procs.append(p)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    snap = Ledger(path).snapshot()
    assert snap.used_mb == 6 * 40 * 7
    assert len(snap.per_pid) == 6 and set(snap.per_pid.values()) == {280}


def test_ledger_oom_and_release_lag_and_dead_pid(tmp_path):
    path = str(tmp_path / "gpu0.json")
    led = Ledger.create(path, name="G", total_mb=1000, release_lag_s=0.3)
    led.alloc(os.getpid(), 800, "w")
    with pytest.raises(OutOfMemory, match="Tried to allocate 300 MiB"):
        led.alloc(os.getpid(), 300, "x")
    t0 = time.time()
    led.free(os.getpid())
    assert led.snapshot().used_mb == 800  # still charged during the lag
    while led.snapshot().used_mb:
        time.sleep(0.01)
    assert 0.28 <= time.time() - t0 < 1.0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    led.alloc(dead.pid, 100, "w")
    assert led.snapshot().used_mb == 100  # dead owner noticed now, reclaimed after the lag
    time.sleep(0.35)
    assert led.snapshot().used_mb == 0


def _shim(sim_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPUMOD_SIM_DIR": str(sim_dir), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "gpumod_tasks.sim.nvidia_smi", *args], capture_output=True, text=True, env=env)


def test_shim_formats_match_nvidia_smi_and_parse(tmp_path):
    led = Ledger.create(tmp_path / "gpu0.json", name="NVIDIA GeForce RTX 4090", total_mb=24564)
    r = _shim(tmp_path, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    assert r.returncode == 0 and r.stdout == ""  # no processes: nothing at all
    led.alloc(os.getpid(), 2500, "w")
    r = _shim(tmp_path, "--query-gpu=name,memory.total,memory.used,memory.free", "--format=csv,noheader,nounits")
    assert r.stdout == "NVIDIA GeForce RTX 4090, 24564, 2500, 22064\n"
    r = _shim(tmp_path, "--query-gpu=memory.used,memory.free", "--format=csv")
    assert r.stdout == "memory.used [MiB], memory.free [MiB]\n2500 MiB, 22064 MiB\n"
    r = _shim(tmp_path, "--query-compute-apps=pid,used_memory", "--format=csv")
    assert r.stdout.splitlines() == ["pid, used_gpu_memory [MiB]", f"{os.getpid()}, 2500 MiB"]
    g = _shim(tmp_path, f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits").stdout
    a = _shim(tmp_path, f"--query-compute-apps={APPS_QUERY}", "--format=csv,noheader,nounits").stdout
    facts = parse_nvidia_smi(g + MARK + "\n" + a)
    assert (facts.primary.used_mb, facts.primary.per_pid) == (2500, {os.getpid(): 2500})
    assert "2500MiB /  24564MiB" in _shim(tmp_path).stdout
    assert _shim(tmp_path, "--query-gpu=bogus", "--format=csv").returncode == 2


class StandIn:
    def __init__(self, tmp_path: Path, port: int, *args: str, env: dict[str, str] | None = None):
        self.url = f"http://127.0.0.1:{port}"
        e = {**os.environ, "GPUMOD_SIM_DIR": str(tmp_path), "PYTHONPATH": str(REPO), **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "gpumod_tasks.sim.server", "--port", str(port), *args],
                                     env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.c = httpx.Client(timeout=10, trust_env=False)

    def wait_listening(self, timeout=10.0) -> float:
        t0 = time.time()
        while time.time() - t0 < timeout:
            try:
                self.c.get(self.url + "/health")
                return time.time() - t0
            except httpx.ConnectError:
                time.sleep(0.01)
        raise AssertionError("stand-in never listened: " + (self.proc.stderr.read() if self.proc.poll() is not None else ""))

    def close(self):
        self.proc.terminate()
        self.proc.wait(5)
        self.c.close()


@pytest.fixture
def gpu(tmp_path):
    return Ledger.create(tmp_path / "gpu0.json", name="NVIDIA GeForce RTX 4090", total_mb=24564, release_lag_s=0.2)


def test_vllm_stand_in_sleep_levels_and_wake_sequence(tmp_path, gpu):
    from conftest import free_ports

    port = free_ports(1)[0]
    s = StandIn(tmp_path, port, "--flavor", "vllm", "--served-model-name", "m", "--vram-mb", "5000", "--sleep-vram-mb", "500",
                "--enable-sleep-mode", "--load-s", "0.3", "--wake-l2-s", "0.2", env={"VLLM_SERVER_DEV_MODE": "1"})
    try:
        took = s.wait_listening()
        assert took >= 0.25  # no listener while loading, like vLLM
        assert gpu.snapshot().used_mb == 5000
        assert s.c.get(s.url + "/health").text == ""
        assert s.c.get(s.url + "/v1/models").json()["data"][0]["id"] == "m"
        r = s.c.post(s.url + "/sleep", params={"level": "1"})
        assert r.json() == {"status": "sleeping", "level": 1}
        assert s.c.get(s.url + "/is_sleeping").json() == {"is_sleeping": True}
        assert s.c.get(s.url + "/health").status_code == 200  # sleeping is not unhealthy
        time.sleep(0.3)
        assert gpu.snapshot().used_mb == 500
        # a request while asleep is accepted and waits until the engine is awake
        result = {}
        th = threading.Thread(target=lambda: result.update(r=s.c.post(s.url + "/v1/chat/completions",
                                                                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})))
        th.start()
        time.sleep(0.2)
        assert th.is_alive()
        assert s.c.post(s.url + "/wake_up").json() == {"status": "awake", "tags": None}
        th.join(5)
        assert result["r"].status_code == 200 and "[m] hi" in result["r"].json()["choices"][0]["message"]["content"]
        assert gpu.snapshot().used_mb == 5000
        # level 2: weights discarded; partial wake stays "sleeping"; reload_weights then kv_cache
        s.c.post(s.url + "/sleep", params={"level": "2"})
        r = s.c.post(s.url + "/wake_up", params=[("tags", "weights")])
        assert r.json()["status"] == "sleeping"
        assert s.c.post(s.url + "/collective_rpc", json={"method": "reload_weights"}).json() == {"results": [None]}
        assert s.c.post(s.url + "/wake_up", params=[("tags", "kv_cache")]).json()["status"] == "awake"
        reply = s.c.post(s.url + "/v1/completions", json={"model": "m", "prompt": "x"}).json()
        assert "garbage" not in reply["choices"][0]["text"]
        assert s.c.post(s.url + "/sleep", params={"level": "7"}).status_code == 400
        assert s.c.post(s.url + "/v1/embeddings", json={"model": "nope", "input": "a"}).status_code == 404
        with s.c.stream("POST", s.url + "/v1/chat/completions", json={"model": "m", "stream": True, "messages": []}) as r:
            chunks = [ln for ln in r.iter_lines() if ln]
        assert chunks[0].startswith("data: {") and chunks[-1] == "data: [DONE]" and len(chunks) > 3
    finally:
        s.close()
    time.sleep(0.25)
    assert gpu.snapshot().used_mb == 0


def test_vllm_dev_routes_only_in_dev_mode_and_028_bodies(tmp_path, gpu):
    from conftest import free_ports

    p1, p2 = free_ports(2)
    a = StandIn(tmp_path, p1, "--flavor", "vllm", "--vram-mb", "100", "--enable-sleep-mode", "--load-s", "0")
    b = StandIn(tmp_path, p2, "--flavor", "vllm", "--vram-mb", "100", "--enable-sleep-mode", "--load-s", "0",
                "--vllm-version", "0.28.0", env={"VLLM_SERVER_DEV_MODE": "1"})
    try:
        a.wait_listening(), b.wait_listening()
        assert a.c.post(a.url + "/sleep").status_code == 404
        assert a.c.post(a.url + "/sleep").json() == {"detail": "Not Found"}
        r = b.c.post(b.url + "/sleep", params={"level": "1"})
        assert (r.status_code, r.text) == (200, "")
        assert b.c.get(b.url + "/is_sleeping").json() == {"is_sleeping": True}
    finally:
        a.close()
        b.close()


def test_llamacpp_router_stand_in_contract(tmp_path, gpu):
    from conftest import free_ports

    port = free_ports(1)[0]
    s = StandIn(tmp_path, port, "--flavor", "llamacpp", "--models-max", "1", "--load-s", "0.3",
                "--sim-model", "a=1000", "--sim-model", "b=2000")
    try:
        s.wait_listening()
        assert s.c.get(s.url + "/health").json() == {"status": "ok"}
        models = {m["id"]: m for m in s.c.get(s.url + "/models").json()["data"]}
        assert models["a"]["status"]["value"] == "unloaded" and models["a"]["owned_by"] == "llamacpp"
        assert "args" in models["a"]["status"] and models["a"]["object"] == "model"
        t0 = time.time()
        assert s.c.post(s.url + "/models/load", json={"model": "a"}).json() == {"success": True}
        assert time.time() - t0 < 0.2  # answers at spawn, not when loaded
        assert {m["id"]: m for m in s.c.get(s.url + "/models").json()["data"]}["a"]["status"]["value"] == "loading"
        assert s.c.post(s.url + "/models/load", json={"model": "a"}).status_code == 400
        assert s.c.post(s.url + "/models/load", json={"model": "zz"}).status_code == 404
        assert s.c.post(s.url + "/models/unload", json={"model": "zz"}).status_code == 400
        assert s.c.post(s.url + "/models/unload", json={"model": "b"}).status_code == 400
        assert s.c.post(s.url + "/v1/chat/completions", json={"messages": []}).status_code == 400
        assert s.c.post(s.url + "/v1/chat/completions", json={"model": "zz"}).status_code == 400
        while {m["id"]: m for m in s.c.get(s.url + "/models").json()["data"]}["a"]["status"]["value"] != "loaded":
            time.sleep(0.02)
        assert gpu.snapshot().used_mb == 1000
        # models-max 1: loading b evicts the least recently used idle model
        s.c.post(s.url + "/models/load", json={"model": "b"})
        st = {m["id"]: m["status"]["value"] for m in s.c.get(s.url + "/models").json()["data"]}
        assert st == {"a": "unloaded", "b": "loading"}
    finally:
        s.close()
