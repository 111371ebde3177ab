"""Run a *real* inference server on a simulated GPU host and charge the VRAM ledger for it.

A CPU-run llama-server holds no VRAM, so on a simulated host this wrapper starts the real command
line as its child and watches it over HTTP: for a llama.cpp router, every model ``GET /models``
reports ``loaded`` is charged with the preset's figure and freed (after the release lag) when it
is not any more; a single-model server is charged once ``/health`` answers 200.  The memory goes on
the GPUs ``CUDA_VISIBLE_DEVICES`` gives the server (indices or UUIDs; an unknown one: exit 1),
split by the real command line's own ``--tensor-split`` (``-ts``; ``--split-mode none`` keeps it on
``--main-gpu``), one pid on several GPUs as llama.cpp is.  The switch's fit
checks and release polling then run against a real server.  Signals go to the child; the wrapper
exits with the child's status, so systemd sees the real server's failures.

    python -m gpumod_tasks.sim.meter --sim-dir DIR --port P --model NAME=MB [...] -- llama-server ...
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from .devices import Charge, UnknownGpu, by_free_memory, parse_split, visible
from .ledger import OutOfMemory


def log(msg: str) -> None:
    sys.stderr.write(time.strftime("%H:%M:%S ") + "gpumod-meter: " + msg + "\n")
    sys.stderr.flush()


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise SystemExit("gpumod-meter: the real command goes after --")
    i = argv.index("--")
    p = argparse.ArgumentParser(prog="gpumod-meter")
    p.add_argument("--sim-dir", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", action="append", default=[], help="NAME=MB, a router model (router mode)")
    p.add_argument("--vram-mb", type=int, default=0, help="single-model server: MB once healthy")
    p.add_argument("--release-lag-s", type=float, default=None)
    p.add_argument("--interval-s", type=float, default=0.05)
    a = p.parse_args(argv[:i])
    cmd = argv[i + 1:]
    if not cmd:
        raise SystemExit("gpumod-meter: empty command after --")
    return a, cmd


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError:
        return 0, b""


def _unload(port: int, name: str) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/models/unload", data=json.dumps({"model": name}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        urllib.request.urlopen(req, timeout=5).read()
    except OSError:
        pass


def loaded_models(body: bytes) -> set[str]:
    """Ids whose router status is ``loaded`` or ``sleeping`` (a child that exists holds its memory)."""
    out = set()
    for e in json.loads(body).get("data", []):
        st = e.get("status") or {}
        if isinstance(st, dict) and st.get("value") in ("loaded", "sleeping") and not st.get("failed"):
            out.add(e.get("id"))
    return out


def _flag(cmd: list[str], *names: str) -> str | None:
    """The value of a flag of the real command line (``--flag V`` or ``--flag=V``), or None."""
    for i, word in enumerate(cmd):
        for n in names:
            if word == n and i + 1 < len(cmd):
                return cmd[i + 1]
            if word.startswith(n + "="):
                return word.split("=", 1)[1]
    return None


def charge_for(sim_dir: str, cmd: list[str]) -> Charge:
    """The GPUs the real server sees and its split over them, from its own command line."""
    gpus = visible(sim_dir)
    split, mode, main_gpu = _flag(cmd, "--tensor-split", "-ts"), _flag(cmd, "--split-mode", "-sm"), _flag(cmd, "--main-gpu", "-mg")
    if mode == "none" or len(gpus) == 1:
        i = int(main_gpu or 0)
        if not 0 <= i < len(gpus):
            raise ValueError(f"--main-gpu {i}: only {len(gpus)} GPUs are visible")
        return Charge([gpus[i]])
    if split:
        ratios = parse_split(split)
        if len(ratios) > len(gpus):
            raise ValueError(f"--tensor-split {split}: {len(ratios)} entries but {len(gpus)} GPUs are visible")
        return Charge(gpus, ratios)
    return Charge(gpus, by_free_memory(gpus))


def main(argv: list[str] | None = None) -> int:
    a, cmd = parse(list(sys.argv[1:] if argv is None else argv))
    try:
        ledger = charge_for(a.sim_dir, cmd)
    except (UnknownGpu, ValueError) as exc:
        log(f"{exc}")
        return 1
    models = {n: int(mb or 0) for n, _, mb in (m.partition("=") for m in a.model)}
    child = subprocess.Popen(cmd)
    charged: set[str] = set()
    stop = threading.Event()

    def forward(signum: int, frame: object) -> None:
        stop.set()
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log(f"watching {os.path.basename(cmd[0])} (pid {child.pid}) on port {a.port}: "
        + (", ".join(f"{n}={mb} MB" for n, mb in models.items()) if models else f"{a.vram_mb} MB when healthy"))
    while child.poll() is None:
        if not stop.is_set():
            if models:
                code, body = _get(a.port, "/models")
                now = set()
                if code == 200:
                    try:
                        now = loaded_models(body) & set(models)
                    except ValueError:
                        now = charged
                for name in sorted(now - charged):
                    try:
                        ledger.alloc(models[name], name, name)
                        charged.add(name)
                        log(f"{name} loaded: charged {models[name]} MB")
                    except OutOfMemory as exc:
                        log(f"{name}: simulated CUDA out of memory ({exc}); unloading it")
                        _unload(a.port, name)
                for name in sorted(charged - now):
                    ledger.free(name, a.release_lag_s)
                    charged.discard(name)
                    log(f"{name} unloaded: freed {models[name]} MB")
            elif "model" not in charged:
                code, _ = _get(a.port, "/health")
                if code == 200:
                    try:
                        ledger.alloc(a.vram_mb, "model", os.path.basename(cmd[0]))
                        charged.add("model")
                        log(f"healthy: charged {a.vram_mb} MB")
                    except OutOfMemory as exc:
                        log(f"simulated CUDA out of memory ({exc}); stopping the server")
                        child.terminate()
        try:
            child.wait(timeout=a.interval_s)
        except subprocess.TimeoutExpired:
            pass
    ledger.free(None, a.release_lag_s)
    rc = child.returncode
    log(f"{os.path.basename(cmd[0])} exited with {rc}")
    if rc < 0:  # died of a signal: die of the same one, so systemd reads it the same way
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
        return 128 - rc
    return rc


if __name__ == "__main__":
    sys.exit(main())
