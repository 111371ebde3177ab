"""GPU facts: nvidia-smi CSV (command + pure parser) and the NVML backend.

One round trip asks both queries::

    nvidia-smi --query-gpu=index,name,memory.total,memory.used,memory.free --format=csv,noheader,nounits
    nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits

Placeholders (``[N/A]``, ``[Insufficient Permissions]``, ``[Not Supported]``) become None; a query
with no processes prints nothing.  Values are MiB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MARK = "--gpumod-compute-apps--"
GPU_QUERY = "index,uuid,name,memory.total,memory.used,memory.free"
APPS_QUERY = "gpu_uuid,pid,used_memory"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_mb: int | None
    used_mb: int | None
    free_mb: int | None
    uuid: str = ""
    per_pid: dict[int, int | None] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class GpuFacts:
    backend: str  # nvml | nvidia-smi | simulated (nvidia-smi shim) | simulated (ledger, read in-process)
    gpus: tuple[Gpu, ...]

    @property
    def primary(self) -> Gpu:
        return self.gpus[0]


def nvidia_smi_script(binary: str = "nvidia-smi") -> str:
    from shlex import quote

    b = quote(binary)
    return (
        f"{b} --query-gpu={GPU_QUERY} --format=csv,noheader,nounits && echo {MARK} && "
        f"{b} --query-compute-apps={APPS_QUERY} --format=csv,noheader,nounits"
    )


def _num(cell: str) -> int | None:
    cell = cell.strip()
    if cell.startswith("[") or not cell:
        return None
    cell = cell.removesuffix("MiB").strip()
    try:
        return int(float(cell))
    except ValueError:
        return None


def parse_nvidia_smi(text: str, backend: str = "nvidia-smi") -> GpuFacts:
    """Parse the output of ``nvidia_smi_script``."""
    gpu_part, _, apps_part = text.partition(MARK)
    gpus: list[Gpu] = []
    for line in gpu_part.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(", ")]
        if len(cells) < 6:
            raise ValueError(f"unexpected nvidia-smi GPU line: {line!r}")
        idx, uuid, name = cells[0], cells[1], ", ".join(cells[2:-3])
        total, used, free = (_num(c) for c in cells[-3:])
        gpus.append(Gpu(index=int(idx), uuid=uuid, name=name, total_mb=total, used_mb=used, free_mb=free))
    by_uuid = {g.uuid: g for g in gpus}
    for line in apps_part.splitlines():
        if not line.strip() or line.startswith("No running"):
            continue
        cells = [c.strip() for c in line.split(", ")]
        if len(cells) != 3:
            continue
        uuid, pid, mb = cells
        g = by_uuid.get(uuid) or (gpus[0] if gpus else None)
        if g is not None and pid.isdigit():
            g.per_pid[int(pid)] = _num(mb)
    return GpuFacts(backend=backend, gpus=tuple(gpus))


def read_nvml(nvml: Any = None) -> GpuFacts:
    """Read all GPUs through NVML. ``nvml`` is the ``pynvml`` module (injectable for tests)."""
    if nvml is None:
        import pynvml as nvml  # type: ignore[no-redef]
    n = nvml
    n.nvmlInit()
    try:
        gpus = []
        for i in range(n.nvmlDeviceGetCount()):
            h = n.nvmlDeviceGetHandleByIndex(i)
            name = n.nvmlDeviceGetName(h)
            if isinstance(name, bytes):  # very old bindings
                name = name.decode()
            try:
                uuid = n.nvmlDeviceGetUUID(h)
                uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            except Exception:
                uuid = ""
            total = used = free = None
            try:
                # v2 "used" excludes driver-reserved memory, matching nvidia-smi's memory.used
                mem = n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)
            except TypeError:
                mem = n.nvmlDeviceGetMemoryInfo(h)
            except n.NVMLError:  # MIG without privileges, iGPU: not supported
                mem = None
            if mem is not None:
                total, used, free = mem.total // 2**20, mem.used // 2**20, mem.free // 2**20
            per: dict[int, int | None] = {}
            try:
                for p in n.nvmlDeviceGetComputeRunningProcesses(h):
                    per[int(p.pid)] = None if p.usedGpuMemory is None else int(p.usedGpuMemory) // 2**20
            except n.NVMLError:
                pass
            gpus.append(Gpu(index=i, name=str(name), uuid=str(uuid), total_mb=total, used_mb=used, free_mb=free, per_pid=per))
        return GpuFacts(backend="nvml", gpus=tuple(gpus))
    finally:
        n.nvmlShutdown()
