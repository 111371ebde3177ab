#!/usr/bin/env python3
"""The LiteLLM hop's cost: added latency (p50, p99) of a request through the fleet's proxy beside
the same request straight to a box's router daemon, in one run, on loopback only.

The simulated host runs one vLLM stand-in that answers at once; its router daemon
(`inv router.serve`, with an API key) is the "box"; `inv fleet.serve` runs LiteLLM's proxy in front
of it (from `fleet.python`: $GPUMOD_FLEET_PYTHON, else ./.venv-fleet, else this interpreter).
Sequential non-streaming chat requests on one keep-alive connection, interleaved in rounds so
machine noise hits both paths alike; then the time to the first streamed chunk, both ways.
    .venv/bin/python scripts/bench_fleet.py [--requests 400]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from benchlib import free_ports

REPO = Path(__file__).resolve().parent.parent
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def fleet_python() -> str:
    for py in (os.environ.get("GPUMOD_FLEET_PYTHON"), str(REPO / ".venv-fleet" / "bin" / "python"), sys.executable):
        if py and os.path.exists(py):
            ok = subprocess.run([py, "-c", "import importlib.util as u, sys; sys.exit(0 if u.find_spec('litellm.proxy') else 1)"],
                                capture_output=True, check=False).returncode == 0
            if ok:
                return py
    sys.exit("LiteLLM's proxy is not installed: pip install 'gpumod[fleet]' (or python3 -m venv .venv-fleet && "
             ".venv-fleet/bin/pip install 'litellm[proxy]' prisma)")


def latencies(c: httpx.Client, url: str, key: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = c.post(url, json=BODY, headers={"Authorization": f"Bearer {key}"})
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
    return out


def first_chunk(c: httpx.Client, url: str, key: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with c.stream("POST", url, json={**BODY, "stream": True}, headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status_code == 200
            first = None
            for _chunk in r.iter_bytes():
                if first is None:
                    first = time.perf_counter() - t0
            out.append(first or 0.0)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def wait_http(url: str, what: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            sys.exit(f"{what} exited ({proc.returncode})")
        try:
            if httpx.get(url, trust_env=False, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"{what} did not start within {timeout:g} s")
        time.sleep(0.1)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400, help="sequential requests per path (at most 5000)")
    a = ap.parse_args()
    n = max(40, min(a.requests, 5000))
    py = fleet_python()
    tmp = Path(tempfile.mkdtemp(prefix="gpumod-bench-fleet-"))
    home = tmp / "home"
    (home / "presets" / "b").mkdir(parents=True)
    (home / "modes").mkdir()
    (home / "inventory").mkdir()
    shutil.copytree(REPO / "templates", home / "templates")
    sport, dport, fport = free_ports(3)
    (home / "presets" / "b" / "chat.yaml").write_text(f"id: chat\nname: chat\ndriver: vllm\nport: {sport}\nvram_mb: 1000\n")
    (home / "modes" / "one.yaml").write_text("id: one\nname: one\nservices: [chat]\n")
    dkey, mkey = "box-" + os.urandom(8).hex(), "sk-" + os.urandom(8).hex()
    (tmp / "box.key").write_text(dkey)
    (tmp / "master.key").write_text(mkey)
    (home / "inventory" / "hosts.yaml").write_text(
        "hosts:\n  local:\n    sim: true\n    gpu: {name: NVIDIA GeForce RTX 4090, total_mb: 24564}\n"
        "    sim_timings: {load_s: 0.1, wake_l1_s: 0.05, wake_l2_s: 0.1, release_lag_s: 0.1}\n"
        f"    router_daemon: {{port: {dport}, api_key_file: {tmp}/box.key}}\n"
        f"    fleet: {{port: {fport}, master_key_file: {tmp}/master.key, python: {py}, config: {tmp}/fleet/litellm.yaml}}\n")
    env = {**os.environ, "GPUMOD_HOME": str(home), "GPUMOD_STATE_DIR": str(tmp / "state"), "PYTHONPATH": str(REPO)}
    inv = [sys.executable, "-m", "gpumod_tasks.program"]
    subprocess.run([*inv, "mode.switch", "--name", "one"], env=env, check=True, capture_output=True)
    daemon = subprocess.Popen([*inv, "router.serve", "--port", str(dport)], env={**env, "GPUMOD_ROUTER_API_KEY_FILE": str(tmp / "box.key")},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(tmp / "fleet.log", "w") as log:
        fleet = subprocess.Popen([*inv, "fleet.serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{dport}/health", "the router daemon", daemon)
        wait_http(f"http://127.0.0.1:{fport}/health/liveliness", "the fleet's proxy", fleet)
        direct = f"http://127.0.0.1:{dport}/v1/chat/completions"
        fronted = f"http://127.0.0.1:{fport}/v1/chat/completions"
        ld: list[float] = []
        lf: list[float] = []
        sd: list[float] = []
        sf: list[float] = []
        with httpx.Client(trust_env=False, timeout=60) as c:
            latencies(c, direct, dkey, 20)  # warm up both paths
            latencies(c, fronted, mkey, 20)
            for _ in range(4):
                ld += latencies(c, direct, dkey, n // 4)
                lf += latencies(c, fronted, mkey, n // 4)
            for _ in range(2):
                sd += first_chunk(c, direct, dkey, max(10, n // 8))
                sf += first_chunk(c, fronted, mkey, max(10, n // 8))
        print(f"latency, {len(ld)} sequential requests each, non-streaming chat, stand-in answering at once:")
        print(f"  direct to the box's daemon p50 {statistics.median(ld) * 1000:.2f} ms p99 {pct(ld, 0.99) * 1000:.2f} ms; "
              f"through LiteLLM p50 {statistics.median(lf) * 1000:.2f} ms p99 {pct(lf, 0.99) * 1000:.2f} ms")
        print(f"  added by the LiteLLM hop: p50 {(statistics.median(lf) - statistics.median(ld)) * 1000:.2f} ms, "
              f"p99 {(pct(lf, 0.99) - pct(ld, 0.99)) * 1000:.2f} ms")
        print(f"time to the first streamed chunk, {len(sd)} requests each: direct p50 {statistics.median(sd) * 1000:.2f} ms, "
              f"through LiteLLM p50 {statistics.median(sf) * 1000:.2f} ms (p99 {pct(sd, 0.99) * 1000:.2f} / {pct(sf, 0.99) * 1000:.2f} ms)")
    finally:
        stop(fleet)
        stop(daemon)
        subprocess.run([*inv, "sim.reset"], env=env, capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
