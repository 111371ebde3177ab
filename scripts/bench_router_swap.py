#!/usr/bin/env python3
"""The router daemon's on-demand swap: what gpumod adds to a request for a model outside the mode.

    .venv/bin/python scripts/bench_router_swap.py [--swaps 20] [--repo CHECKOUT]

The bundled catalog (ports moved to free ones, as scripts/bench_cli.py sets it up) on a
simulated host whose stand-ins have no delays (``sim_timings`` all 0), under `inv router.serve`.
In mode rag, a chat request for glm-code makes the daemon switch to code (vllm-embedding put to
sleep, glm-code loaded into its llama.cpp router); a request for vllm-embedding switches back
(glm-code unloaded, its VRAM waited for, vllm-embedding woken). Each request's latency minus a
request to the same model once it is awake is the swap's added time, p50 and p99 per direction.
The llama.cpp router stand-in reaps an unloaded model 50 ms after /models/unload (as the real
one's child exits), so code -> rag also shows it with that 50 ms taken off: gpumod's own time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bench_cli import setup
from bench_router import pct, wait_http
from benchlib import free_ports

HERE = Path(__file__).resolve().parent.parent
ROUTER_REAP_S = 0.05


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--swaps", type=int, default=20, help="swaps per direction")
    ap.add_argument("--repo", type=Path, default=HERE, help="the checkout to measure (default: this one)")
    a = ap.parse_args()
    repo = a.repo.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="gpumod-bench-swap-"))
    home = tmp / "home"
    setup(repo, home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUMOD_")}
    env.update(GPUMOD_HOME=str(home), GPUMOD_STATE_DIR=str(tmp / "state"), PYTHONPATH=str(repo))
    inv = [sys.executable, "-m", "gpumod_tasks.program"]
    for m in ("code", "rag"):
        subprocess.run([*inv, "mode.switch", "--name", m], env=env, cwd=home, check=True, capture_output=True)
    port = free_ports(1)[0]
    router = subprocess.Popen([*inv, "router.serve", "--port", str(port)], env=env, cwd=home,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    swap: dict[str, list[float]] = {"rag -> code": [], "code -> rag": []}
    awake: list[float] = []
    try:
        wait_http(f"{url}/health", "the router")
        with httpx.Client(trust_env=False, timeout=60) as c:
            def ask(model: str) -> float:
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                if model == "vllm-embedding":
                    path, body = "/v1/embeddings", {"model": model, "input": "hi"}
                else:
                    path = "/v1/chat/completions"
                t0 = time.perf_counter()
                r = c.post(url + path, json=body)
                dt = time.perf_counter() - t0
                assert r.status_code == 200, r.text
                return dt

            ask("vllm-embedding")
            for _ in range(a.swaps):
                swap["rag -> code"].append(ask("glm-code"))
                awake.append(ask("glm-code"))
                swap["code -> rag"].append(ask("vllm-embedding"))
                awake.append(ask("vllm-embedding"))
    finally:
        router.terminate()
        router.wait(10)
        subprocess.run([*inv, "sim.reset"], env=env, cwd=home, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(awake)
    print(f"== {repo}: router daemon, on-demand swap, zero-delay stand-ins, {a.swaps} swaps each way")
    print(f"request to an awake model: p50 {base * 1000:.1f} ms")
    for what, xs in swap.items():
        added = [x - base for x in xs]
        line = f"{what}: added p50 {statistics.median(added) * 1000:.0f} ms, p99 {pct(added, 0.99) * 1000:.0f} ms"
        if what == "code -> rag":
            own = [x - ROUTER_REAP_S for x in added]
            line += (f"; less the stand-in's {ROUTER_REAP_S * 1000:.0f} ms reap: p50 {statistics.median(own) * 1000:.0f} ms,"
                     f" p99 {pct(own, 0.99) * 1000:.0f} ms")
        print(line)


if __name__ == "__main__":
    sys.exit(main())
