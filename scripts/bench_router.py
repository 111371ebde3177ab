#!/usr/bin/env python3
"""The router daemon's cost: added latency (p50, p99) and throughput, router vs direct, in one run.

A vLLM stand-in on the simulated host serves non-streaming chat requests; the same request mix is
sent straight to it and through `inv router.serve` (uvicorn, one worker). Latency: sequential
requests, one connection. Throughput: 16 concurrent keep-alive clients for a fixed count, 3 interleaved rounds.
    .venv/bin/python scripts/bench_router.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def latencies(url: str, n: int) -> list[float]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    out = []
    with httpx.Client(trust_env=False, timeout=30) as c:
        for _ in range(50):
            c.post(url, json=body)  # warm up
        for _ in range(n):
            t0 = time.perf_counter()
            r = c.post(url, json=body)
            out.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    return out


async def throughput(url: str, n: int, clients: int = 16, model: str = "m") -> float:
    """Requests/s with ``clients`` concurrent keep-alive clients (aiohttp: a light load generator,
    so the 2 cores go to the servers more than to the client)."""
    import aiohttp

    body = b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}]}' % model.encode()
    per = n // clients
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as s:
        async def worker() -> None:
            for _ in range(per):
                async with s.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    await r.read()
                    assert r.status == 200

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(clients)])
        return per * clients / (time.perf_counter() - t0)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gpumod-bench-router-"))
    home = tmp / "home"
    (home / "presets" / "b").mkdir(parents=True)
    (home / "modes").mkdir()
    (home / "inventory").mkdir()
    shutil.copytree(REPO / "templates", home / "templates")
    port, rport, sport = free_port(), free_port(), free_port()
    (home / "presets" / "b" / "m.yaml").write_text(f"id: m\nname: m\ndriver: vllm\nport: {port}\nvram_mb: 1000\n")
    # the same with 20 ms per request, like a small model answering: where the router's own cost stops mattering
    (home / "presets" / "b" / "slow.yaml").write_text(f"id: slow\nname: slow\ndriver: vllm\nport: {sport}\nvram_mb: 1000\n"
                                                      "sim: {infer_s: 0.02}\n")
    (home / "modes" / "one.yaml").write_text("id: one\nname: one\nservices: [m, slow]\n")
    (home / "inventory" / "hosts.yaml").write_text(
        "hosts:\n  local:\n    sim: true\n    gpu: {name: NVIDIA GeForce RTX 4090, total_mb: 24564}\n"
        "    sim_timings: {load_s: 0.1, wake_l1_s: 0.05, wake_l2_s: 0.1, release_lag_s: 0.1}\n")
    env = {**os.environ, "GPUMOD_HOME": str(home), "GPUMOD_STATE_DIR": str(tmp / "state")}
    inv = str(REPO / ".venv" / "bin" / "inv")
    subprocess.run([inv, "mode.switch", "--name", "one"], env=env, check=True, capture_output=True)
    router = subprocess.Popen([inv, "router.serve", "--port", str(rport)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{rport}/health", trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "router did not start"
            time.sleep(0.05)
        direct = f"http://127.0.0.1:{port}/v1/chat/completions"
        routed = f"http://127.0.0.1:{rport}/v1/chat/completions"
        n = a.requests
        # interleave the two measurements so machine noise hits both alike
        ld, lr = [], []
        for _ in range(4):
            ld += latencies(direct, n // 4)
            lr += latencies(routed, n // 4)
        rounds = [(asyncio.run(throughput(direct, n)), asyncio.run(throughput(routed, n))) for _ in range(3)]
        td = statistics.median(d for d, _ in rounds)
        tr = statistics.median(r for _, r in rounds)
        ratio = statistics.median(r / d for d, r in rounds)
        p50d, p50r = statistics.median(ld), statistics.median(lr)
        p99d, p99r = pct(ld, 0.99), pct(lr, 0.99)
        print(f"{n} sequential requests each, non-streaming chat, one stand-in")
        print(f"latency direct p50 {p50d * 1000:.2f} ms p99 {p99d * 1000:.2f} ms; "
              f"router p50 {p50r * 1000:.2f} ms p99 {p99r * 1000:.2f} ms")
        print(f"added by the router: p50 {(p50r - p50d) * 1000:.2f} ms, p99 {(p99r - p99d) * 1000:.2f} ms")
        print(f"throughput (16 clients, median of 3 interleaved rounds): direct {td:.0f} req/s, router {tr:.0f} req/s, "
              f"ratio {ratio:.2f} (per round: {', '.join(f'{r / d:.2f}' for d, r in rounds)})")
        sdirect = f"http://127.0.0.1:{sport}/v1/chat/completions"
        srounds = [(asyncio.run(throughput(sdirect, 800, model="slow")), asyncio.run(throughput(routed, 800, model="slow")))
                   for _ in range(3)]
        print(f"throughput with 20 ms per request upstream (16 clients): direct {statistics.median(d for d, _ in srounds):.0f} req/s, "
              f"router {statistics.median(r for _, r in srounds):.0f} req/s, ratio {statistics.median(r / d for d, r in srounds):.2f}")
    finally:
        router.terminate()
        router.wait(10)
        subprocess.run([inv, "sim.reset"], env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
