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

Several GPUs (the multi-GPU contract): ``CUDA_VISIBLE_DEVICES`` entries (indices or UUIDs) are
resolved against the sim dir's ledgers (``devices.visible``; an unknown GPU: an error and exit 1);
``--vram-mb`` is the model's TOTAL.  vLLM uses the first ``--tensor-parallel-size`` visible GPUs,
one worker process per rank holding an even share (``workers``); llama.cpp is one process charged
on its GPUs by ``--tensor-split`` ratios (none given: by free memory, as llama.cpp splits; ``--split-mode
none``: ``--main-gpu`` only); a custom (fastapi) server is one process on every GPU it is given.

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

from .devices import Charge, UnknownGpu, by_free_memory, parse_split, visible
from .http import bind, serve
from .ledger import Ledger
from .llamacpp import Router, router_app, single_llama_app, single_llama_loader
from .openai import log
from .vllm import Holder, VllmEngine, vllm_app
from .workers import Worker


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
    p.add_argument("--sleep-vram-mb", type=int, default=None,
                   help="the TOTAL kept while asleep (default 512; under tensor parallel 2458 per GPU, as published for vLLM)")
    p.add_argument("--weights-mb", type=int, default=None)
    # vLLM's own flags
    p.add_argument("--model", "-m", default="")
    p.add_argument("--served-model-name", nargs="*", default=None)
    p.add_argument("--enable-sleep-mode", action="store_true")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--gpu-memory-utilization", type=float, default=None)
    p.add_argument("--vllm-version", default="0.33.0")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    # llama.cpp router flags
    p.add_argument("--models-dir", default="")
    p.add_argument("--models-max", type=int, default=4)
    p.add_argument("--models-preset", default="")
    p.add_argument("--no-models-autoload", action="store_true")
    p.add_argument("--alias", "-a", default="")
    p.add_argument("--sim-model", action="append", help="NAME=MB: a router model and the VRAM it takes when loaded")
    p.add_argument("--tensor-split", "-ts", default="")
    p.add_argument("--split-mode", "-sm", default="layer", choices=("none", "layer", "row"))
    p.add_argument("--main-gpu", "-mg", type=int, default=0)
    args, unknown = p.parse_known_args(argv)
    if unknown and args.flavor != "llamacpp":
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


#: what a sleeping tensor-parallel vLLM keeps on each GPU when not told (the low end of published
#: TP=2 figures; engines/caps.py has the same default for the planner)
TP_RESIDUAL_MB_PER_GPU = 2458


def gpus_seen(args: argparse.Namespace) -> list[Ledger]:
    """The simulated GPUs this process sees (CUDA_VISIBLE_DEVICES; unset: ``--gpu`` if given, else all)."""
    sim_dir = args.sim_dir or os.environ.get("GPUMOD_SIM_DIR", "")
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is None and args.gpu:
        cvd = str(args.gpu)
    try:
        return visible(sim_dir, cvd, env=False)
    except UnknownGpu as exc:
        log(f"ERROR: {exc}")
        raise SystemExit(1) from None
    except ValueError as exc:  # a ledger that is not one
        log(f"ERROR: {exc}")
        raise SystemExit(1) from None


def llama_charge(args: argparse.Namespace, gpus: list[Ledger]) -> Charge:
    """Where a llama.cpp process's memory goes: its split over the GPUs it sees."""
    try:
        if args.split_mode == "none" or len(gpus) == 1:
            if not 0 <= args.main_gpu < len(gpus):
                raise ValueError(f"--main-gpu {args.main_gpu}: only {len(gpus)} GPUs are visible")
            return Charge([gpus[args.main_gpu]])
        if args.tensor_split:
            ratios = parse_split(args.tensor_split)
            if len(ratios) > len(gpus):
                raise ValueError(f"--tensor-split {args.tensor_split}: {len(ratios)} entries but {len(gpus)} GPUs are visible")
            return Charge(gpus, ratios)
        return Charge(gpus, by_free_memory(gpus))
    except ValueError as exc:
        log(f"error: {exc}")
        raise SystemExit(1) from None


def vllm_ranks(args: argparse.Namespace, gpus: list[Ledger], name: str) -> tuple[list[Holder], list[Ledger]]:
    """vLLM: the first ``--tensor-parallel-size`` visible GPUs, one worker process per rank (TP 1:
    this process).  A custom server: this process, on every GPU CUDA_VISIBLE_DEVICES gives it."""
    if args.flavor == "fastapi":
        use = gpus if "CUDA_VISIBLE_DEVICES" in os.environ else gpus[:1]
        return [Charge([g]) for g in use], use
    tp = args.tensor_parallel_size
    if tp < 1 or tp > len(gpus):
        log(f"ValueError: Tensor parallel size ({tp}) cannot be larger than the number of available GPUs ({len(gpus)}).")
        raise SystemExit(1)
    if tp == 1:
        return [Charge([gpus[0]])], gpus[:1]
    return [Worker(r, gpus[r], name, args.release_lag_s) for r in range(tp)], gpus[:tp]


def main(argv: list[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    gpus = gpus_seen(args)
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
        ranks, used = vllm_ranks(args, gpus, served[0])
        if args.sleep_vram_mb is None:  # servers.md D2: TP 1 about 0.5-1.3 GiB; TP 2 2.4-7.4 GiB per GPU
            args.sleep_vram_mb = TP_RESIDUAL_MB_PER_GPU * len(ranks) if any(isinstance(r, Worker) for r in ranks) else 512
        if args.vram_mb == 0 and args.gpu_memory_utilization:
            # like vLLM: a fraction of each device's total memory, on every GPU it uses
            args.vram_mb = sum(int(g.snapshot().total_mb * args.gpu_memory_utilization) for g in used)
        engine = VllmEngine(args, ranks, used, served[0])
        cleanup.append(engine.shutdown)
        engine.watch_workers()
        srv = bind(vllm_app(args, engine, served, fastapi=args.flavor == "fastapi"), args.host, args.port)
        log(f"{args.flavor} stand-in: loading {served[0]} ({args.vram_mb} MiB) on port {args.port}"
            + (f", tensor parallel {len(ranks)}: worker pids " + ", ".join(str(r.pid) for r in ranks)
               if any(isinstance(r, Worker) for r in ranks) else ""))
        engine.load()  # no listener until loaded, like vLLM (connection refused while loading)
        log("Application startup complete.")
        serve(srv, stop)
    elif args.models_dir or args.sim_model or args.models_preset or not args.model:
        router = Router(args, llama_charge(args, gpus))
        cleanup.append(router.shutdown)
        srv = bind(router_app(args, router), args.host, args.port)
        log(f"llama.cpp router stand-in on port {args.port}: {len(router.models)} models, models-max {args.models_max}")
        serve(srv, stop)
    else:
        state = {"loaded": False}
        srv = bind(single_llama_app(args, state), args.host, args.port)
        charge = llama_charge(args, gpus)
        cleanup.append(lambda: charge.free(None, args.release_lag_s))
        single_llama_loader(args, charge, state)
        serve(srv, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
