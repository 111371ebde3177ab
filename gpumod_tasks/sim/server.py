"""Stand-in inference servers that speak the real vLLM / llama.cpp / custom-server HTTP APIs and
charge the simulated VRAM ledger.

    python -m gpumod_tasks.sim.server --flavor vllm --port 8010 --model Qwen/Qwen3-Embedding-0.6B \
        --served-model-name vllm-embedding-code --vram-mb 2500 --enable-sleep-mode   # + VLLM_SERVER_DEV_MODE=1
    python -m gpumod_tasks.sim.server --flavor llamacpp --port 7070 --models-dir DIR --models-max 1
    python -m gpumod_tasks.sim.server --flavor fastapi --port 8030 --vram-mb 4500 --enable-sleep-mode

Behaviour follows ../shared/reference/servers.md (read from the servers' source): vLLM binds its
port but does not listen until the engine is loaded; its dev routes exist only with
VLLM_SERVER_DEV_MODE=1; a request to a sleeping engine is accepted and waits; the llama.cpp
router listens at once, answers /models/load at spawn and evicts the least recently used idle
model at --models-max.  Stdlib only (it runs on agentless boxes).

This module is the entry point (``python -m gpumod_tasks.sim.server`` here, ``gpumod_sim.server`` on
a remote box); each engine's stand-in lives in its own module: ``vllm`` (also the custom "fastapi"
servers), ``llamacpp``; the OpenAI-shaped bodies they share are in ``openai``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from .http import bind, serve
from .llamacpp import Router, router_app, single_llama_app, single_llama_loader
from .openai import ledger_for, log
from .vllm import VllmEngine, vllm_app


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpumod-sim-server", description=__doc__.split("\n\n")[0])
    p.add_argument("--flavor", choices=("vllm", "llamacpp", "fastapi"), required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sim-dir", default="")
    p.add_argument("--gpu", type=int, default=0)
    p.add_argument("--load-s", type=float, default=1.5)
    p.add_argument("--wake-l1-s", type=float, default=0.3)
    p.add_argument("--wake-l2-s", type=float, default=0.8)
    p.add_argument("--release-lag-s", type=float, default=None)
    p.add_argument("--infer-s", type=float, default=0.0, help="extra time per inference request")
    p.add_argument("--stream-delay-s", type=float, default=0.0, help="pause between streamed chunks")
    p.add_argument("--vram-mb", type=int, default=0)
    p.add_argument("--sleep-vram-mb", type=int, default=512)
    p.add_argument("--weights-mb", type=int, default=None)
    # hold more or less than declared (a preset that lies): awake x factor; asleep per vLLM level
    p.add_argument("--hold-factor", type=float, default=1.0)
    p.add_argument("--sleep-l1-mb", type=int, default=None)
    p.add_argument("--sleep-l2-mb", type=int, default=None)
    # vLLM's own flags
    p.add_argument("--model", "-m", default="")
    p.add_argument("--served-model-name", nargs="*", default=None)
    p.add_argument("--enable-sleep-mode", action="store_true")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--gpu-memory-utilization", type=float, default=None)
    p.add_argument("--vllm-version", default="0.33.0")
    # llama.cpp router flags
    p.add_argument("--models-dir", default="")
    p.add_argument("--models-max", type=int, default=4)
    p.add_argument("--models-preset", default="")
    p.add_argument("--no-models-autoload", action="store_true")
    p.add_argument("--alias", "-a", default="")
    p.add_argument("--sim-model", action="append", help="NAME=MB: a router model and the VRAM it takes when loaded")
    args, unknown = p.parse_known_args(argv)
    if unknown and args.flavor != "llamacpp":
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    ledger = ledger_for(args)
    if args.vram_mb == 0 and args.gpu_memory_utilization:
        # like vLLM: a fraction of the device's total memory
        args.vram_mb = int(ledger.snapshot().total_mb * args.gpu_memory_utilization)
    stop = threading.Event()
    cleanup: list[Any] = []

    def on_term(signum: int, frame: Any) -> None:
        for fn in cleanup:
            fn()
        log(f"shutting down (signal {signum})")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    if args.flavor in ("vllm", "fastapi"):
        served = args.served_model_name or [args.model or "model"]
        engine = VllmEngine(args, ledger, served[0])
        srv = bind(vllm_app(args, engine, served, fastapi=args.flavor == "fastapi"), args.host, args.port)
        cleanup.append(engine.shutdown)
        log(f"{args.flavor} stand-in: loading {served[0]} ({args.vram_mb} MiB) on port {args.port}")
        engine.load()  # no listener until loaded, like vLLM (connection refused while loading)
        log("Application startup complete.")
        serve(srv, stop)
    elif args.models_dir or args.sim_model or args.models_preset or not args.model:
        router = Router(args, ledger)
        cleanup.append(router.shutdown)
        srv = bind(router_app(args, router), args.host, args.port)
        log(f"llama.cpp router stand-in on port {args.port}: {len(router.models)} models, models-max {args.models_max}")
        serve(srv, stop)
    else:
        state = {"loaded": False}
        srv = bind(single_llama_app(args, state), args.host, args.port)
        pid = os.getpid()
        cleanup.append(lambda: ledger.free(pid, None, args.release_lag_s))
        single_llama_loader(args, ledger, state)
        serve(srv, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
