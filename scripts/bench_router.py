#!/usr/bin/env python3
"""The router daemon's cost: added latency (p50, p99) and throughput, router vs direct, in one run.

vLLM stand-ins on the simulated host serve non-streaming chat requests; the same requests go
straight to a stand-in and through `inv router.serve` (uvicorn, one worker). Latency: sequential
requests on one connection, to a stand-in that answers at once. Throughput: 16 concurrent
keep-alive clients, 3 interleaved rounds (direct, router, nginx) per stand-in, for stand-ins that
take 0, 2, 5 and 20 ms per request (`sim: {infer_s: ...}`), with the router's own CPU time per
request. Where `nginx` is on PATH (Debian: nginx-light) the same rounds go through it as well, one
worker with keep-alive upstreams: what a C reverse proxy reaches on the same machine in the same
run, i.e. what this machine allows a proxy at all. Nothing here touches the system's nginx.
    .venv/bin/python scripts/bench_router.py [--requests 4000] [--no-nginx]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from benchlib import free_ports

REPO = Path(__file__).resolve().parent.parent


def latencies(url: str, n: int, model: str) -> list[float]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
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


async def throughput(url: str, n: int, model: str, clients: int = 16) -> float:
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


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# per-request time of each stand-in (s) and the requests per throughput round (about 0.5 s each)
SERVICE_TIMES = {0.0: 1.0, 0.002: 0.6, 0.005: 0.4, 0.02: 0.12}


def nginx_conf(tmp: Path, routes: dict[int, int]) -> Path:
    """One worker, keep-alive upstreams, no buffering, no logs: a plain fast reverse proxy."""
    servers = "\n".join(
        f"  upstream u{up} {{ server 127.0.0.1:{up}; keepalive 64; }}\n"
        f"  server {{ listen 127.0.0.1:{listen}; location / {{ proxy_pass http://u{up}; proxy_http_version 1.1;"
        f" proxy_set_header Connection \"\"; proxy_buffering off; }} }}" for listen, up in routes.items())
    conf = tmp / "nginx.conf"
    conf.write_text(f"worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx-error.log;\n"
                    "events { worker_connections 1024; }\n"
                    f"http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};\n{servers}\n}}\n")
    return conf


def wait_http(url: str, what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url, trust_env=False)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000, help="requests per round to the instant stand-in")
    ap.add_argument("--no-nginx", action="store_true", help="leave out the nginx reference rounds")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gpumod-bench-router-"))
    home = tmp / "home"
    (home / "presets" / "b").mkdir(parents=True)
    (home / "modes").mkdir()
    (home / "inventory").mkdir()
    shutil.copytree(REPO / "templates", home / "templates")
    free = free_ports(2 * len(SERVICE_TIMES) + 1)
    ports = {s: free.pop() for s in SERVICE_TIMES}
    names = {s: f"m{int(s * 1000)}ms" for s in SERVICE_TIMES}
    for s, port in ports.items():
        (home / "presets" / "b" / f"{names[s]}.yaml").write_text(
            f"id: {names[s]}\nname: {names[s]}\ndriver: vllm\nport: {port}\nvram_mb: 1000\nsim: {{infer_s: {s}}}\n")
    (home / "modes" / "one.yaml").write_text(f"id: one\nname: one\nservices: [{', '.join(names.values())}]\n")
    (home / "inventory" / "hosts.yaml").write_text(
        "hosts:\n  local:\n    sim: true\n    gpu: {name: NVIDIA GeForce RTX 4090, total_mb: 24564}\n"
        "    sim_timings: {load_s: 0.1, wake_l1_s: 0.05, wake_l2_s: 0.1, release_lag_s: 0.1}\n")
    env = {**os.environ, "GPUMOD_HOME": str(home), "GPUMOD_STATE_DIR": str(tmp / "state")}
    inv = str(REPO / ".venv" / "bin" / "inv")
    subprocess.run([inv, "mode.switch", "--name", "one"], env=env, check=True, capture_output=True)
    rport = free.pop()
    router = subprocess.Popen([inv, "router.serve", "--port", str(rport)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    nginx = None
    nports: dict[float, int] = {}
    if not a.no_nginx and shutil.which("nginx"):
        nports = {s: free.pop() for s in SERVICE_TIMES}
        conf = nginx_conf(tmp, {nports[s]: ports[s] for s in SERVICE_TIMES})
        nginx = subprocess.Popen(["nginx", "-p", str(tmp), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{rport}/health", "the router")
        for np_ in nports.values():
            wait_http(f"http://127.0.0.1:{np_}/", "nginx")
        path = "/v1/chat/completions"
        direct = f"http://127.0.0.1:{ports[0.0]}{path}"
        routed = f"http://127.0.0.1:{rport}{path}"
        n = a.requests
        # interleave the measurements so machine noise hits both alike
        ld, lr = [], []
        for _ in range(4):
            ld += latencies(direct, n // 8, names[0.0])
            lr += latencies(routed, n // 8, names[0.0])
        p50d, p50r = statistics.median(ld), statistics.median(lr)
        p99d, p99r = pct(ld, 0.99), pct(lr, 0.99)
        print(f"latency, {len(ld)} sequential requests each, non-streaming chat, stand-in answering at once:")
        print(f"  direct p50 {p50d * 1000:.2f} ms p99 {p99d * 1000:.2f} ms; router p50 {p50r * 1000:.2f} ms "
              f"p99 {p99r * 1000:.2f} ms")
        print(f"  added by the router: p50 {(p50r - p50d) * 1000:.2f} ms, p99 {(p99r - p99d) * 1000:.2f} ms")
        print("throughput, 16 clients, median of 3 interleaved rounds (req/s; ratio = through the proxy / direct):")
        head = f"  {'stand-in':>9} {'direct':>7} {'router':>7} {'ratio':>6} {'router CPU/req':>15}"
        print(head + (f" {'nginx':>7} {'ratio':>6}" if nginx else ""))
        for s, scale in SERVICE_TIMES.items():
            m, count = names[s], max(160, int(n * scale))
            d_url = f"http://127.0.0.1:{ports[s]}{path}"
            rounds = []
            for _ in range(3):
                d = asyncio.run(throughput(d_url, count, m))
                c0 = cpu_s(router.pid)
                r = asyncio.run(throughput(routed, count, m))
                cpu = (cpu_s(router.pid) - c0) / count
                x = asyncio.run(throughput(f"http://127.0.0.1:{nports[s]}{path}", count, m)) if nginx else 0.0
                rounds.append((d, r, cpu, x))
            td = statistics.median(d for d, _, _, _ in rounds)
            tr = statistics.median(r for _, r, _, _ in rounds)
            ratio = statistics.median(r / d for d, r, _, _ in rounds)
            cpu = statistics.median(c for _, _, c, _ in rounds)
            line = f"  {s * 1000:>6.0f} ms {td:>7.0f} {tr:>7.0f} {ratio:>6.2f} {cpu * 1e6:>12.0f} us"
            if nginx:
                tx = statistics.median(x for _, _, _, x in rounds)
                line += f" {tx:>7.0f} {statistics.median(x / d for d, _, _, x in rounds):>6.2f}"
            print(line, flush=True)
    finally:
        router.terminate()
        router.wait(10)
        if nginx:
            nginx.terminate()
            nginx.wait(10)
        subprocess.run([inv, "sim.reset"], env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
