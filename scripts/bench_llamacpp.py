"""llama.cpp router: time from POST /models/load until gpumod sees ``loaded`` — real vs stand-in.

Both routers start with the same flags on a directory of tiny GGUFs; gpumod's own driver and probe
(``engines.wake`` + ``engines.probe``) and its adaptive tenacity wait do the polling, as in a switch.
Usage: .venv/bin/python scripts/bench_llamacpp.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchlib import free_ports  # noqa: E402
from tenacity import Retrying, retry_if_result, stop_after_delay  # noqa: E402

from gpumod_tasks.catalog.model import Driver, Preset, SleepMode  # noqa: E402
from gpumod_tasks.engines import Health, probe, sleep, wake  # noqa: E402
from gpumod_tasks.execute import adaptive_wait  # noqa: E402
from gpumod_tasks.host.local import LocalHost  # noqa: E402
from gpumod_tasks.inventory import HostSpec  # noqa: E402
from gpumod_tasks.llamacpp.build import build_llama_server  # noqa: E402
from gpumod_tasks.llamacpp.gguf_tiny import write_models_dir  # noqa: E402
from gpumod_tasks.sim.ledger import Ledger  # noqa: E402


def measure(host: LocalHost, port: int, runs: int) -> list[float]:
    p = Preset(id="m", name="m", driver=Driver.LLAMACPP, port=port, vram_mb=100, supports_sleep=True,
               sleep_mode=SleepMode.ROUTER, model_path="/x/alpha.gguf", startup_timeout=60)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        wake(host, p, 0)
        Retrying(stop=stop_after_delay(60), wait=adaptive_wait(),
                 retry=retry_if_result(lambda ok: not ok))(lambda: (lambda pr: pr.health is Health.OK and not pr.sleeping)(probe(host, p)))
        out.append(time.perf_counter() - t0)
        sleep(host, p, 0)
        Retrying(stop=stop_after_delay(60), wait=adaptive_wait(),
                 retry=retry_if_result(lambda ok: not ok))(lambda: probe(host, p).router_status == "unloaded")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    binary = build_llama_server().path
    host = LocalHost(HostSpec(name="bench"))
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        write_models_dir(models, ["alpha"])
        Ledger.create(Path(tmp) / "sim" / "gpu0.json", name="sim", total_mb=24564, release_lag_s=0.05)
        results = {}
        for kind in ("real", "stand-in (load_s 0.3)"):
            port = free_ports(1)[0]
            flags = ["--host", "127.0.0.1", "--port", str(port), "--models-dir", str(models), "--models-max", "1", "--no-models-autoload"]
            prog = [str(binary)] if kind == "real" else [sys.executable, "-m", "gpumod_tasks.sim.server", "--flavor", "llamacpp",
                                                           "--sim-dir", f"{tmp}/sim", "--load-s", "0.3"]
            proc = subprocess.Popen([*prog, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env={**os.environ, "PYTHONPATH": str(REPO)})
            try:
                Retrying(stop=stop_after_delay(20), wait=adaptive_wait(), retry=retry_if_result(lambda ok: not ok))(
                    lambda port=port: _up(host, port))
                results[kind] = measure(host, port, a.runs)
            finally:
                proc.terminate()
                proc.wait(10)
    for kind, xs in results.items():
        print(f"{kind:24s} /models/load -> gpumod sees loaded: median {statistics.median(xs)*1000:.0f} ms, "
              f"min {min(xs)*1000:.0f}, max {max(xs)*1000:.0f} ({len(xs)} runs)")


def _up(host: LocalHost, port: int) -> bool:
    import httpx

    try:
        return host.http.get(f"http://127.0.0.1:{port}/health").status_code == 200
    except httpx.TransportError:
        return False


if __name__ == "__main__":
    main()
