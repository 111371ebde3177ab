"""Reading the GPU fact from a host, with its backend fallback: NVML -> nvidia-smi, or the
simulator's nvidia-smi shim on a simulated host.

A simulated GPU on this machine is read in-process from its ledger files (``sim_dir``), the way
NVML is read on a real one: the same snapshot the shim would print, without starting a Python
process per read. The shim stays what a remote box, a batched fact and users run.

The parsers live in ``facts/gpu.py``; this module only decides which backend to ask and what its
exit codes mean.  ``EXIT_CODES`` is the one table of the exit codes each command backend may end
with that are *answers* (turned into a ``GpuProbeError`` with the backend's own words); any other
exit code is a failure of the host itself and raises ``CommandFailed``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..errors import GpuProbeError
from .gpu import APPS_QUERY, GPU_QUERY, MARK, Gpu, GpuFacts, nvidia_smi_script, parse_nvidia_smi, read_nvml

if TYPE_CHECKING:
    from ..host.base import Host

SIM_BACKEND = "simulated (nvidia-smi shim)"
#: the same figures read from the ledger files by this process (a local simulated GPU, as NVML is read)
SIM_LEDGER_BACKEND = "simulated (ledger, read in-process)"

_NVIDIA_SMI = {
    0: "ok",
    1: "failed (unspecified)",
    2: "invalid argument or field",
    6: "query unsuccessful",
    9: "NVIDIA driver not loaded",
    127: "nvidia-smi not installed",
}
_SHIM = {
    0: "ok",
    1: "the simulator failed (a traceback on stderr)",
    2: "invalid argument or field",
    9: "no simulated GPU (no ledger in the sim dir)",
    126: "the shim is not executable",
    127: "the shim (or its interpreter) is missing",
}

#: backend -> {exit code it may answer with: what it means}
EXIT_CODES: Mapping[str, Mapping[int, str]] = MappingProxyType({
    "nvidia-smi": MappingProxyType(_NVIDIA_SMI),
    "shim": MappingProxyType(_SHIM),
})

#: shim exit codes after which the simulated GPU is set up again and asked once more
SHIM_REPAIRABLE = frozenset({9, 126, 127})


def accepted(backend: str) -> tuple[int, ...]:
    """The exit codes of ``backend`` that are answers (the ``ok=`` of its command)."""
    return tuple(EXIT_CODES[backend])


def meaning(backend: str, exit_code: int) -> str:
    return EXIT_CODES[backend].get(exit_code, f"exit {exit_code}")


@dataclass
class GpuReader:
    """Reads one host's GPU. ``shim`` is the simulated nvidia-smi's path on a simulated host (None
    on a real one); ``repair`` sets the simulated GPU up again when the shim cannot answer."""

    host: Host
    label: str  # the host's name, for error messages
    backend: str = "auto"  # auto | nvml | nvidia-smi (the inventory's gpu.backend)
    shim: str | None = None
    repair: Callable[[], object] | None = None
    sim_dir: str | None = None  # the simulated GPU's ledgers, read in-process when the host is this machine

    @property
    def _in_process(self) -> bool:
        # this machine itself, not just its disk: reading the ledger settles it, which checks that
        # its pids live, and a namespace's (nsenter) pids are its own
        return self.shim is not None and self.sim_dir is not None and self.host.is_this_machine

    @property
    def _binary(self) -> str:
        return self.shim or "nvidia-smi"

    @property
    def _kind(self) -> str:
        return "shim" if self.shim else "nvidia-smi"

    @property
    def _nvml_first(self) -> bool:
        # NVML is a library call in this process: only for a host whose kernel is this machine's
        return self.shim is None and self.backend in ("auto", "nvml") and self.host.colocated

    def fact_argv(self) -> list[str]:
        """The GPU fact as one command (nvidia-smi's CSV, or the shim's), for batching."""
        return ["sh", "-c", nvidia_smi_script(self._binary)]

    def parse_fact(self, exit_code: int, stdout: str) -> GpuFacts:
        """The batched fact's answer; any failure is asked again directly (the shim may need
        creating, or the error needs its words)."""
        if exit_code == 0:
            return parse_nvidia_smi(stdout, backend=SIM_BACKEND if self.shim else "nvidia-smi")
        return self.read()

    def read(self) -> GpuFacts:
        """Total/used/free and per-pid usage, from NVML, nvidia-smi, or the simulator's shim."""
        if self.shim:
            return self._read_shim()
        errors = []
        if self._nvml_first:
            try:
                return read_nvml()
            except Exception as exc:  # NVML missing or failing: fall back to nvidia-smi
                if self.backend == "nvml":
                    raise GpuProbeError(f"[{self.label}] NVML failed: {exc}") from exc
                errors.append(f"NVML: {exc}")
        r = self.host.run(self.fact_argv(), ok=accepted("nvidia-smi"))
        if r.exit_code == 0:
            return parse_nvidia_smi(r.stdout)
        errors.append(f"nvidia-smi: {meaning('nvidia-smi', r.exit_code)} (exit {r.exit_code}): "
                      f"{r.stderr.strip() or r.stdout.strip()}")
        raise GpuProbeError(f"[{self.label}] no GPU backend answered: " + "; ".join(errors))

    def _read_ledgers(self) -> GpuFacts | None:
        """The simulated GPUs from their ledgers, as the shim reports them; None: no ledger."""
        from ..sim.ledger import ledgers

        assert self.sim_dir is not None
        try:
            snaps = [led.snapshot() for led in ledgers(self.sim_dir)]
        except FileNotFoundError:  # removed between listing and reading
            return None
        except (OSError, ValueError) as exc:  # LedgerInvalid is a ValueError: the shim's exit 1
            raise GpuProbeError(f"[{self.label}] simulated nvidia-smi failed: {meaning('shim', 1)}: {exc}") from None
        if not snaps:
            return None
        return GpuFacts(backend=SIM_LEDGER_BACKEND, gpus=tuple(
            Gpu(index=g.index, name=g.name, total_mb=g.total_mb, used_mb=g.used_mb, free_mb=g.free_mb, uuid=g.uuid,
                per_pid=dict(sorted(g.per_pid.items()))) for g in snaps))

    def _read_in_process(self) -> GpuFacts:
        facts = self._read_ledgers()
        if facts is None and self.repair is not None:
            self.repair()
            facts = self._read_ledgers()
        if facts is None:
            raise GpuProbeError(f"[{self.label}] simulated nvidia-smi failed: {meaning('shim', 9)}")
        return facts

    def _read_shim(self) -> GpuFacts:
        ok = accepted("shim")
        assert self.shim is not None
        if self._in_process:
            return self._read_in_process()
        if self.host.colocated:
            # two short local processes: run the GPU and the process query side by side
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(2) as pool:
                fg = pool.submit(self.host.run, [self.shim, f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"], ok=ok)
                fa = pool.submit(self.host.run, [self.shim, f"--query-compute-apps={APPS_QUERY}", "--format=csv,noheader,nounits"], ok=ok)
                rg, ra = fg.result(), fa.result()
            if rg.exit_code == 0 and ra.exit_code == 0:
                return parse_nvidia_smi(rg.stdout + MARK + "\n" + ra.stdout, backend=SIM_BACKEND)
            r = rg if rg.exit_code else ra
        else:
            r = self.host.run(self.fact_argv(), ok=ok)
            if r.exit_code == 0:
                return parse_nvidia_smi(r.stdout, backend=SIM_BACKEND)
        if (r.exit_code in SHIM_REPAIRABLE or "No such file" in r.stderr) and self.repair is not None:
            self.repair()
            r = self.host.run(self.fact_argv(), ok=ok)
            if r.exit_code == 0:
                return parse_nvidia_smi(r.stdout, backend=SIM_BACKEND)
        raise GpuProbeError(f"[{self.label}] simulated nvidia-smi failed: {meaning('shim', r.exit_code)}"
                            f"{': ' + r.stderr.strip() if r.stderr.strip() else ''}")

    def used_mb(self) -> int:
        """Just the primary GPU's used MB: the cheap query the release poll repeats."""
        if self._in_process:
            return self._read_in_process().primary.used_mb or 0
        if self._nvml_first:
            try:
                return self.read().primary.used_mb or 0
            except GpuProbeError:
                pass
        r = self.host.run([self._binary, "--query-gpu=memory.used", "--format=csv,noheader,nounits"], ok=accepted(self._kind))
        if r.exit_code != 0:
            raise GpuProbeError(f"[{self.label}] nvidia-smi failed: {meaning(self._kind, r.exit_code)}"
                                f"{': ' + r.stderr.strip() if r.stderr.strip() else ''}")
        first = r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""
        try:
            return int(first.split(",")[0].strip())
        except ValueError:
            raise GpuProbeError(f"[{self.label}] nvidia-smi memory.used unreadable: {first!r}") from None

    def used_per_gpu(self) -> dict[int, int]:
        """Every GPU's used MB by index: the release poll on a box with several GPUs (all GPUs in
        one read, as cheap as the primary's)."""
        if self._in_process:
            return {g.index: g.used_mb or 0 for g in self._read_in_process().gpus}
        if self._nvml_first:
            try:
                return {g.index: g.used_mb or 0 for g in self.read().gpus}
            except GpuProbeError:
                pass
        r = self.host.run([self._binary, "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                          ok=accepted(self._kind))
        if r.exit_code != 0:
            raise GpuProbeError(f"[{self.label}] nvidia-smi failed: {meaning(self._kind, r.exit_code)}"
                                f"{': ' + r.stderr.strip() if r.stderr.strip() else ''}")
        return parse_used_per_gpu(r.stdout, self.label)


def parse_used_per_gpu(text: str, label: str = "") -> dict[int, int]:
    """Pure: ``index, memory.used`` lines -> {index: MB} (a placeholder reads as 0)."""
    out: dict[int, int] = {}
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        try:
            out[int(cells[0])] = int(cells[1]) if len(cells) > 1 and cells[1].isdigit() else 0
        except (ValueError, IndexError):
            raise GpuProbeError(f"[{label}] nvidia-smi index,memory.used unreadable: {line!r}") from None
    return out
