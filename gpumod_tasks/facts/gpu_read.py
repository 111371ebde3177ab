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
        facts = self._read_here()
        if facts is not None:
            return facts.primary.used_mb or 0
        out = self._query("memory.used")
        first = out.strip().splitlines()[0] if out.strip() else ""
        try:
            return int(first.split(",")[0].strip())
        except ValueError:
            raise GpuProbeError(f"[{self.label}] nvidia-smi memory.used unreadable: {first!r}") from None

    def used_per_gpu(self) -> dict[int, int]:
        """Every GPU's used MB by index: the release poll on a box with several GPUs (all GPUs in
        one read, as cheap as the primary's)."""
        facts = self._read_here()
        if facts is not None:
            return {g.index: g.used_mb or 0 for g in facts.gpus}
        return parse_used_per_gpu(self._query("index,memory.used"), self.label)

    def _read_here(self) -> GpuFacts | None:
        """The whole read where it costs no command (the simulator's ledgers in this process, or
        NVML); None where the release poll asks nvidia-smi for just the figure it needs."""
        if self._in_process:
            return self._read_in_process()
        if self._nvml_first:
            try:
                return self.read()
            except GpuProbeError:
                pass
        return None

    def _query(self, fields: str) -> str:
        """``nvidia-smi --query-gpu=FIELDS`` as CSV without header or units; its stdout."""
        r = self.host.run([self._binary, f"--query-gpu={fields}", "--format=csv,noheader,nounits"], ok=accepted(self._kind))
        if r.exit_code != 0:
            raise GpuProbeError(f"[{self.label}] nvidia-smi failed: {meaning(self._kind, r.exit_code)}"
                                f"{': ' + r.stderr.strip() if r.stderr.strip() else ''}")
        return r.stdout

    # -- the release wait as one command on a remote box -----------------------------------
    @property
    def waits_on_box(self) -> bool:
        """A box reached over the network: a release wait is better one command polling there than
        a round trip per poll (nothing in this process can read its GPU)."""
        return not self.host.colocated and not self._in_process and not self._nvml_first

    def wait_used_at_most(self, limit_mb: int, timeout_s: float, polls: list[int]) -> bool:
        """Poll the primary GPU's used MB on the box until it is at most ``limit_mb`` (True) or
        ``timeout_s`` passed (False), in one command: the executor's interval (3% of the time
        waited, 2 ms to 1 s), from the start of one poll to the next.  Every figure read is appended to ``polls``; a
        backend that fails raises ``GpuProbeError`` with its words, as ``used_mb`` does."""
        r = self.host.run(["sh", "-c", WAIT_USED_SH, "sh", self._binary, str(int(limit_mb)),
                           str(max(1, round(timeout_s * 100)))],
                          ok=(0, 1, 3, 4), timeout=timeout_s + 30, what="wait for the GPU's memory")
        rc_line = ""
        for line in r.stdout.splitlines():
            kind, _, value = line.partition(" ")
            if kind == "used" and value.isdigit():
                polls.append(int(value))
            elif kind in ("error", "bad"):
                rc_line = value
        if r.exit_code == 3:
            code, _, words = rc_line.partition(" ")
            exit_code = int(code) if code.isdigit() else -1
            raise GpuProbeError(f"[{self.label}] nvidia-smi failed: {meaning(self._kind, exit_code)}"
                                f"{': ' + words.strip() if words.strip() else ''}")
        if r.exit_code == 4:
            raise GpuProbeError(f"[{self.label}] nvidia-smi memory.used unreadable: {rc_line!r}")
        return r.exit_code == 0


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


# $1 the nvidia-smi (or shim) to ask, $2 the limit (MB), $3 the timeout (centiseconds).  Prints
# ``used N`` per poll; exit 0 at or under the limit, 1 timed out, 3 ``error RC WORDS`` (the
# backend failed), 4 ``bad TEXT`` (an answer that is no number).  The clock is /proc/uptime (no
# fork); a poll starts 3% of the time waited (2 ms to 1 s) after the last one started, or at once
# when that one took longer (the shim, a slow nvidia-smi).
WAIT_USED_SH = r'''
bin=$1; limit=$2; timeout=$3
cs() { read -r up _ < /proc/uptime; s=${up%.*}; f=${up#*.}; now=$(( s * 100 + ${f#0} )); }
cs; start=$now
while :; do
  cs; polled=$now
  out=$("$bin" --query-gpu=memory.used --format=csv,noheader,nounits 2>&1); rc=$?
  if [ $rc -ne 0 ]; then printf 'error %s %s\n' "$rc" "$(printf '%s' "$out" | head -c 300 | tr '\n' ' ')"; exit 3; fi
  set -f; set -- $out; set +f
  u=${1%,}
  case "$u" in ''|*[!0-9]*) printf 'bad %s\n' "$(printf '%s' "$out" | head -c 80 | tr '\n' ' ')"; exit 4;; esac
  echo "used $u"
  [ "$u" -le "$limit" ] && exit 0
  cs; el=$(( now - start ))
  [ $el -ge "$timeout" ] && exit 1
  # the next poll starts an interval after this one started: a slow nvidia-smi is not waited for twice
  ms=$(( el * 30 / 100 )); [ $ms -lt 2 ] && ms=2; [ $ms -gt 1000 ] && ms=1000
  ms=$(( ms - (now - polled) * 10 ))
  [ $ms -gt 0 ] && sleep "$(( ms / 1000 )).$(( ms % 1000 / 100 ))$(( ms % 100 / 10 ))$(( ms % 10 ))"
done
'''
