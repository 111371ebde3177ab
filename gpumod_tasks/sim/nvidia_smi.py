"""An ``nvidia-smi`` that answers from the simulated GPU ledger, in nvidia-smi's own formats.

Stdlib only.  Supports the queries gpumod (and most tools) use:

    nvidia-smi --query-gpu=name,memory.total,memory.used,memory.free --format=csv,noheader,nounits
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits
    nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,memory.free --format=csv,noheader,nounits
    nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits
    nvidia-smi -L         (one line per GPU with its UUID)
    nvidia-smi            (the summary table)
    -i / --id=ID[,ID]     (any of them on selected GPUs: an index, a UUID or a PCI bus id)

Values are integers in MiB joined by ", "; without ``nounits`` each gets " MiB"; without
``noheader`` a header with canonical field names comes first; no processes prints nothing.  Every
GPU is one line of ``--query-gpu``, in index order; ``--query-compute-apps`` prints one line per
(process, GPU) pair, so a process on two GPUs (a llama.cpp split) appears twice, once per
``gpu_uuid``; a tensor-parallel vLLM shows one worker pid per GPU.  An ``-i`` that matches no GPU:
"No devices were found", exit 6, as nvidia-smi.
The ledger directory comes from ``GPUMOD_SIM_DIR``.
"""

from __future__ import annotations

import os
import sys
import time

from .ledger import GpuSnapshot, ledgers

GPU_FIELDS = {
    # query name -> (canonical header name, unit or "")
    "index": ("index", ""),
    "name": ("name", ""),
    "gpu_name": ("name", ""),
    "uuid": ("uuid", ""),
    "gpu_uuid": ("uuid", ""),
    "memory.total": ("memory.total [MiB]", "MiB"),
    "memory.used": ("memory.used [MiB]", "MiB"),
    "memory.free": ("memory.free [MiB]", "MiB"),
    "memory.reserved": ("memory.reserved [MiB]", "MiB"),
    "utilization.gpu": ("utilization.gpu [%]", "%"),
    "driver_version": ("driver_version", ""),
    "pci.bus_id": ("pci.bus_id", ""),
    "count": ("count", ""),
}
APP_FIELDS = {
    "pid": ("pid", ""),
    "process_name": ("process_name", ""),
    "name": ("process_name", ""),
    "used_memory": ("used_gpu_memory [MiB]", "MiB"),
    "used_gpu_memory": ("used_gpu_memory [MiB]", "MiB"),
    "gpu_uuid": ("gpu_uuid", ""),
    "gpu_name": ("gpu_name", ""),
    "gpu_bus_id": ("gpu_bus_id", ""),
}
DRIVER = "580.95.05"


def _process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read().split(b"\0")
        return raw[0].decode(errors="replace") or "[Not Found]"
    except OSError:
        return "[Not Found]"


def _gpu_value(field: str, g: GpuSnapshot, count: int = 1) -> str:
    return {
        "index": str(g.index),
        "name": g.name,
        "gpu_name": g.name,
        "uuid": g.uuid,
        "gpu_uuid": g.uuid,
        "memory.total": str(g.total_mb),
        "memory.used": str(g.used_mb),
        "memory.free": str(g.free_mb),
        "memory.reserved": "0",
        "utilization.gpu": "0",
        "driver_version": DRIVER,
        "pci.bus_id": _bus_id(g),
        "count": str(count),
    }[field]


def _app_value(field: str, g: GpuSnapshot, pid: int, mb: int) -> str:
    return {
        "pid": str(pid),
        "process_name": _process_name(pid),
        "name": _process_name(pid),
        "used_memory": str(mb),
        "used_gpu_memory": str(mb),
        "gpu_uuid": g.uuid,
        "gpu_name": g.name,
        "gpu_bus_id": _bus_id(g),
    }[field]


def _csv(fields: list[str], table: dict[str, tuple[str, str]], rows: list[list[str]], fmt: set[str]) -> str:
    out = []
    if "noheader" not in fmt:
        out.append(", ".join(table[f][0] if "nounits" not in fmt else table[f][0].split(" [")[0] for f in fields))
    for row in rows:
        cells = []
        for f, v in zip(fields, row):
            unit = table[f][1]
            cells.append(f"{v} {unit}" if unit and "nounits" not in fmt else v)
        out.append(", ".join(cells))
    return "\n".join(out) + ("\n" if out else "")


def summary(gpus: list[GpuSnapshot]) -> str:
    now = time.strftime("%a %b %d %H:%M:%S %Y")
    lines = [
        now,
        "+-----------------------------------------------------------------------------------------+",
        f"| NVIDIA-SMI {DRIVER}  (gpumod simulated GPU)   Driver Version: {DRIVER}   CUDA Version: 13.0     |",
        "|-----------------------------------------+------------------------+----------------------+",
        "| GPU  Name                               |           Memory-Usage | GPU-Util             |",
        "|=========================================+========================+======================|",
    ]
    for g in gpus:
        lines.append(f"| {g.index:>3}  {g.name[:34]:<34} | {g.used_mb:>7}MiB / {g.total_mb:>6}MiB |      0%              |")
    lines += [
        "+-----------------------------------------+------------------------+----------------------+",
        "",
        "+-----------------------------------------------------------------------------------------+",
        "| Processes:                                                                              |",
        "|  GPU   PID   Type   Process name                                              GPU Memory |",
        "|=========================================================================================|",
    ]
    procs = [(g, pid, mb) for g in gpus for pid, mb in sorted(g.per_pid.items())]
    if not procs:
        lines.append("|  No running processes found                                                             |")
    for g, pid, mb in procs:
        name = _process_name(pid)[-50:]
        lines.append(f"|  {g.index:>3} {pid:>7}    C   {name:<50} {mb:>8}MiB |")
    lines.append("+-----------------------------------------------------------------------------------------+")
    return "\n".join(lines) + "\n"


def _bus_id(g: GpuSnapshot) -> str:
    return f"00000000:{g.index + 1:02X}:00.0"


def _is(g: GpuSnapshot, ident: str) -> bool:
    """Does ``-i IDENT`` select this GPU: its index, its UUID (or a unique-looking prefix), its bus id."""
    if ident.isdigit():
        return g.index == int(ident)
    if ident.upper().startswith("GPU-"):
        return g.uuid.lower() == ident.lower() or (len(ident) > 4 and g.uuid.lower().startswith(ident.lower()))
    return ident.upper() in (_bus_id(g).upper(), _bus_id(g)[4:].upper())


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    sim_dir = os.environ.get("GPUMOD_SIM_DIR", "")
    if not sim_dir or not ledgers(sim_dir):
        sys.stderr.write("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. (no simulated GPU: run inv sim.up)\n")
        return 9
    query_gpu = query_apps = None
    fmt: set[str] = set()
    ids: list[str] | None = None
    list_gpus = False
    it = iter(args)
    for a in it:
        if a.startswith("--query-gpu="):
            query_gpu = [f.strip() for f in a.split("=", 1)[1].split(",") if f.strip()]
        elif a.startswith("--query-compute-apps="):
            query_apps = [f.strip() for f in a.split("=", 1)[1].split(",") if f.strip()]
        elif a.startswith("--format="):
            fmt = {f.strip() for f in a.split("=", 1)[1].split(",")}
        elif a in ("-i", "--id"):
            ids = [x.strip() for x in next(it, "").split(",")]
        elif a.startswith("--id="):
            ids = [x.strip() for x in a.split("=", 1)[1].split(",")]
        elif a in ("-L", "--list-gpus"):
            list_gpus = True
        else:
            sys.stderr.write(f'Invalid combination of input arguments. Please run "nvidia-smi -h" for help. ({a})\n')
            return 2
    gpus = [led.snapshot() for led in ledgers(sim_dir)]
    if ids is not None:
        gpus = [g for g in gpus if any(_is(g, x) for x in ids)]
        if not gpus:
            sys.stdout.write("No devices were found\n")
            return 6
    if list_gpus:
        for g in gpus:
            print(f"GPU {g.index}: {g.name} (UUID: {g.uuid})")
        return 0
    if query_gpu is None and query_apps is None:
        sys.stdout.write(summary(gpus))
        return 0
    if "csv" not in fmt:
        sys.stderr.write('"--format" must be specified with csv.\n')
        return 2
    if query_gpu is not None:
        bad = [f for f in query_gpu if f not in GPU_FIELDS]
        if bad:
            sys.stderr.write(f'Field "{bad[0]}" is not a valid field to query.\n')
            return 2
        rows = [[_gpu_value(f, g, len(gpus)) for f in query_gpu] for g in gpus]
        sys.stdout.write(_csv(query_gpu, GPU_FIELDS, rows, fmt))
    if query_apps is not None:
        bad = [f for f in query_apps if f not in APP_FIELDS]
        if bad:
            sys.stderr.write(f'Field "{bad[0]}" is not a valid field to query.\n')
            return 2
        rows = [[_app_value(f, g, pid, mb) for f in query_apps] for g in gpus for pid, mb in sorted(g.per_pid.items())]
        if rows or "noheader" not in fmt:
            sys.stdout.write(_csv(query_apps, APP_FIELDS, rows, fmt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
