#!/usr/bin/env python3
"""The router daemon's on-demand swap: what gpumod adds to a request for a model outside the mode.

    .venv/bin/python scripts/bench_router_swap.py [--swaps 20] [--repo CHECKOUT [--repo CHECKOUT]]

The bundled catalog (ports moved to free ones, as scripts/bench_cli.py sets it up) on a
simulated host whose stand-ins have no delays (``sim_timings`` all 0), under `inv router.serve`.
In mode rag, a chat request for glm-code makes the daemon switch to code (vllm-embedding put to
sleep, glm-code loaded into its llama.cpp router); a request for vllm-embedding switches back
(glm-code unloaded, its VRAM waited for, vllm-embedding woken). Each request's latency minus a
request to the same model once it is awake (0.2 s later, the daemon at rest) is the swap's added
time, p50 and p99 per direction.
The llama.cpp router stand-in reaps an unloaded model 50 ms after /models/unload (as the real
one's child exits), so code -> rag also shows it with that 50 ms taken off: gpumod's own time.
``--repo A --repo B`` runs a daemon per checkout, each on its own simulated host, and
interleaves their swaps so the machine's noise hits both alike.
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
REST_S = 0.2  # between a swap and the baseline request


class Daemon:
    """One checkout's `inv router.serve` on its own simulated host (home, state dir, ports)."""

    def __init__(self, repo: Path, tmp: Path, avoid: set[int]):
        self.repo, self.home = repo, tmp / "home"
        self.ports = setup(repo, self.home, avoid)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GPUMOD_")}
        self.env.update(GPUMOD_HOME=str(self.home), GPUMOD_STATE_DIR=str(tmp / "state"), PYTHONPATH=str(repo))
        self.inv = [sys.executable, "-m", "gpumod_tasks.program"]
        self.proc: subprocess.Popen[bytes] | None = None
        for m in ("code", "rag"):
            r = subprocess.run([*self.inv, "mode.switch", "--name", m], env=self.env, cwd=self.home,
                               capture_output=True, text=True)
            if r.returncode != 0:
                self.stop()
                raise SystemExit(f"{repo}: inv mode.switch --name {m} failed ({r.returncode}): {r.stderr}{r.stdout}")
        port = free_ports(1)[0]
        while port in avoid | self.ports:
            port = free_ports(1)[0]
        self.ports.add(port)
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([*self.inv, "router.serve", "--port", str(port)], env=self.env, cwd=self.home,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.swap: dict[str, list[float]] = {"rag -> code": [], "code -> rag": []}
        self.awake: list[float] = []

    def ask(self, c: httpx.Client, model: str) -> float:
        body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        if model == "vllm-embedding":
            path, body = "/v1/embeddings", {"model": model, "input": "hi"}
        else:
            path = "/v1/chat/completions"
        t0 = time.perf_counter()
        r = c.post(self.url + path, json=body)
        dt = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        return dt

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        subprocess.run([*self.inv, "sim.reset"], env=self.env, cwd=self.home, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--swaps", type=int, default=20, help="swaps per direction")
    ap.add_argument("--show", action="store_true", help="also print every swap's added ms, sorted")
    ap.add_argument("--repo", type=Path, action="append",
                    help="a checkout to measure (default: this one); given twice, both are measured, their swaps interleaved")
    a = ap.parse_args()
    repos = [r.resolve() for r in (a.repo or [HERE])]
    tmp = Path(tempfile.mkdtemp(prefix="gpumod-bench-swap-"))
    daemons: list[Daemon] = []
    try:
        taken: set[int] = set()
        for i, repo in enumerate(repos):  # each checkout drives its own simulated host
            daemons.append(Daemon(repo, tmp / f"d{i}", taken))
            taken |= daemons[-1].ports
        for d in daemons:
            wait_http(f"{d.url}/health", "the router")
        with httpx.Client(trust_env=False, timeout=60) as c:
            for d in daemons:
                d.ask(c, "vllm-embedding")
            # interleaved, so the machine's noise hits every checkout alike; the request to the awake
            # model (the baseline) comes once the daemon is at rest again (it observes after a swap)
            for _ in range(a.swaps):
                for d in daemons:
                    d.swap["rag -> code"].append(d.ask(c, "glm-code"))
                time.sleep(REST_S)
                for d in daemons:
                    d.awake.append(d.ask(c, "glm-code"))
                for d in daemons:
                    d.swap["code -> rag"].append(d.ask(c, "vllm-embedding"))
                time.sleep(REST_S)
                for d in daemons:
                    d.awake.append(d.ask(c, "vllm-embedding"))
    finally:
        for d in daemons:
            d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    for d in daemons:
        base = statistics.median(d.awake)
        print(f"== {d.repo}: router daemon, on-demand swap, zero-delay stand-ins, {a.swaps} swaps each way")
        print(f"request to an awake model: p50 {base * 1000:.1f} ms")
        for what, xs in d.swap.items():
            added = [x - base for x in xs]
            line = f"{what}: added p50 {statistics.median(added) * 1000:.0f} ms, p99 {pct(added, 0.99) * 1000:.0f} ms"
            if what == "code -> rag":
                own = [x - ROUTER_REAP_S for x in added]
                line += (f"; less the stand-in's {ROUTER_REAP_S * 1000:.0f} ms reap: p50 {statistics.median(own) * 1000:.0f} ms,"
                         f" p99 {pct(own, 0.99) * 1000:.0f} ms")
            print(line)
            if a.show:
                print("  added ms: " + " ".join(f"{x * 1000:.0f}" for x in sorted(added)))


if __name__ == "__main__":
    sys.exit(main())
