"""Which simulated GPUs a stand-in sees, and one process's memory spread over several of them.

Stdlib only (it runs on agentless boxes).  As CUDA does (../shared/reference/servers.md, D3):
``CUDA_VISIBLE_DEVICES`` lists GPUs by index or by UUID (``GPU-...``, or a unique prefix of one),
comma-separated; the process then sees them renumbered 0..n-1 in that order; unset, it sees every
GPU.  Where CUDA silently hides every GPU from the first entry it cannot match on, a stand-in
refuses to start and says which entry and which GPUs exist, so a misrendered unit fails loudly.

A ``Charge`` is one pid's allocations on several GPUs (a llama.cpp ``--tensor-split``, a custom
server given several GPUs): each allocation is split by the same rule as the planner's
``Preset.per_gpu_mb`` (by ratio, rounded down, the remainder on the first GPU) and is all or
nothing: when one GPU is short, what was taken on the others is given back at once.
"""

from __future__ import annotations

import os

from .ledger import Ledger, OutOfMemory, ledgers


class UnknownGpu(Exception):
    """A CUDA_VISIBLE_DEVICES entry names no simulated GPU."""


def visible(sim_dir: str, cvd: str | None = None, *, env: bool = True) -> list[Ledger]:
    """The ledgers of the GPUs a process sees, in CUDA order.  ``cvd`` None with ``env``: read
    ``CUDA_VISIBLE_DEVICES``; unset: every GPU."""
    if cvd is None and env:
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    leds = ledgers(sim_dir)
    if not leds:
        raise UnknownGpu(f"no simulated GPU found in {sim_dir or '(no sim dir)'}; run: inv sim.up")
    if cvd is None:
        return leds
    metas = [(led, *led.meta()) for led in leds]
    known = ", ".join(f"{i} {u}" for _, i, u, _ in metas)
    out: list[Ledger] = []
    entries = [e.strip() for e in cvd.split(",")]
    if entries == [""]:
        raise UnknownGpu("CUDA_VISIBLE_DEVICES is empty: no GPU is visible (RuntimeError: No CUDA GPUs are available)")
    for e in entries:
        if e.isdigit():
            hits = [m for m in metas if m[1] == int(e)]
        elif e.startswith("GPU-"):
            hits = [m for m in metas if m[2] == e] or [m for m in metas if m[2].startswith(e)]
        else:
            hits = []
        if len(hits) != 1:
            what = "matches several GPUs" if hits else "names no simulated GPU"
            raise UnknownGpu(f"CUDA_VISIBLE_DEVICES={cvd}: {e!r} {what} (GPUs: {known})")
        if hits[0][0] in out:
            raise UnknownGpu(f"CUDA_VISIBLE_DEVICES={cvd}: {e!r} lists GPU {hits[0][1]} twice (GPUs: {known})")
        out.append(hits[0][0])
    return out


def parse_split(text: str) -> list[float]:
    """llama.cpp's ``--tensor-split 3,1`` (also ``3/1``): non-negative ratios, not all zero."""
    try:
        ratios = [float(x) for x in text.replace("/", ",").split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--tensor-split {text!r}: expected numbers like 3,1") from None
    if not ratios or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"--tensor-split {text!r}: expected non-negative ratios, not all zero")
    return ratios


def split_mb(mb: int, ratios: list[float]) -> list[int]:
    """``mb`` by ``ratios``, rounded down, the remainder on the first (as ``Preset.per_gpu_mb``)."""
    total = sum(ratios)
    shares = [int(mb * r / total) for r in ratios]
    shares[0] += mb - sum(shares)
    return shares


def by_free_memory(gpus: list[Ledger]) -> list[float]:
    """llama.cpp's split when none is given: in proportion to each device's free memory."""
    free = [float(g.snapshot().free_mb) for g in gpus]
    return free if sum(free) > 0 else [1.0] * len(gpus)


class Charge:
    """One pid's memory spread over ``gpus`` by ``ratios`` (one GPU: ratios [1])."""

    def __init__(self, gpus: list[Ledger], ratios: list[float] | None = None, pid: int | None = None):
        if not gpus:
            raise ValueError("a charge needs at least one GPU")
        ratios = list(ratios or [1.0] * len(gpus))
        if len(ratios) < len(gpus):  # llama.cpp: devices beyond the split's entries get nothing
            ratios += [0.0] * (len(gpus) - len(ratios))
        self.gpus, self.ratios = gpus[:len(ratios)], ratios[:len(gpus)]
        self.pid = os.getpid() if pid is None else pid

    def shares(self, mb: int) -> list[int]:
        return split_mb(mb, self.ratios)

    def alloc(self, mb: int, tag: str = "", owner: str = "") -> None:
        """Charge ``mb`` in total, split over the GPUs; OutOfMemory (nothing charged) when one is short."""
        done: list[Ledger] = []
        try:
            for led, share in zip(self.gpus, self.shares(mb)):
                if share:
                    led.alloc(self.pid, share, tag, owner)
                    done.append(led)
        except OutOfMemory:
            for led in done:
                led.free(self.pid, tag, lag_s=0)
            raise

    def free(self, tag: str | None = None, lag_s: float | None = None) -> int:
        return sum(led.free(self.pid, tag, lag_s) for led in self.gpus)

    def free_mb(self) -> list[int]:
        return [g.snapshot().free_mb for g in self.gpus]
