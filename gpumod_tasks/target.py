"""A Target is one host as gpumod drives it: its identity and capabilities (inventory entry,
connection, catalog, state dir, service manager, root prefix, whether the GPU is real or
simulated).  Setting up a simulated GPU is ``simhost.py``'s; reading the GPU, with its backend
fallback, is ``facts/gpu_read.py``'s; the methods here that callers use only delegate."""

from __future__ import annotations

import functools
import shlex
from dataclasses import dataclass
from pathlib import Path

from .catalog.model import Catalog
from .facts.gpu import GpuFacts
from .facts.gpu_read import GpuReader
from .host.base import Host
from .inventory import HostSpec
from .paths import local_state_override
from .render import PREFLIGHT_SCRIPT, HostFacts, preflight_path
from .service_manager import ServiceManager, Supervisor, Systemd
from .simhost import SimSetup


@dataclass
class Target:
    spec: HostSpec
    host: Host
    catalog: Catalog
    project_root: str

    @functools.cached_property
    def state_dir(self) -> str:
        if self.spec.is_local and not self.spec.state_dir and local_state_override():
            return str(local_state_override())
        return self.host.expand(self.spec.resolved_state_dir())

    @functools.cached_property
    def sim(self) -> bool:
        if self.spec.sim is not None:
            return self.spec.sim
        # the driver's own proc entry is the canonical "is there an NVIDIA driver" check
        if self.host.is_this_machine:
            return not Path("/proc/driver/nvidia/version").exists()
        r = self.host.run(["test", "-e", "/proc/driver/nvidia/version"], ok=(0, 1))
        return r.exit_code != 0

    @functools.cached_property
    def manager(self) -> ServiceManager:
        kind = self.spec.service_manager
        if kind == "auto":
            kind = "systemd" if self._systemd_usable() else "supervisor"
        if kind == "systemd":
            return Systemd(self.host, user=self.spec.scope == "user")
        return Supervisor(self.host, self.state_dir)

    def _systemd_usable(self) -> bool:
        # sd_booted(): /run/systemd/system exists only when systemd is PID 1
        if self.host.is_this_machine:
            return Path("/run/systemd/system").is_dir()
        return self.host.run(["test", "-d", "/run/systemd/system"], ok=(0, 1)).exit_code == 0

    @property
    def root_prefix(self) -> str:
        """Where host protections are installed: "/" is live; anything else is a staging root (a
        simulated host keeps its own, so trying gpumod never edits the machine's /etc)."""
        if self.spec.root_prefix:
            return self.host.expand(self.spec.root_prefix)
        return f"{self.sim_dir}/root" if self.sim else "/"

    # -- the simulated GPU (simhost.py sets it up) --------------------------------------------
    @functools.cached_property
    def sim_setup(self) -> SimSetup:
        return SimSetup(self.host, self.spec, self.state_dir)

    @property
    def sim_dir(self) -> str:
        return self.sim_setup.sim_dir

    @property
    def shim_path(self) -> str:
        return self.sim_setup.shim_path

    def header(self) -> str:
        """The first line of every command's output: which host, real or simulated, which manager."""
        if self.sim:
            gpus = self.sim_setup.gpus
            if len(gpus) > 1 and len({(g.name, g.total_mb) for g in gpus}) == 1:
                what = f"{len(gpus)} simulated GPUs ({gpus[0].name}, {gpus[0].total_mb} MB each)"
            elif len(gpus) > 1:
                what = f"{len(gpus)} simulated GPUs (" + "; ".join(f"GPU{i} {g.name}, {g.total_mb} MB" for i, g in enumerate(gpus)) + ")"
            else:
                what = f"simulated GPU ({self.sim_setup.gpu_name}, {self.gpu_total_hint} MB)"
        else:
            what = "NVIDIA GPU"
        return f"host {self.spec.label}: {what}, services via {self.manager.kind}"

    @property
    def gpu_total_hint(self) -> int:
        return self.sim_setup.total_mb

    def render_facts(self, gpu_total_mb: int | None = None) -> HostFacts:
        total = gpu_total_mb or self.spec.gpu_total_mb or (self.gpu_total_hint if self.sim else 0)
        if not self.sim:
            if not total:
                total = self.gpu().primary.total_mb or 0
            return HostFacts(gpu_total_mb=total, sim=False, state_dir=self.state_dir)
        rt = self.sim_setup.runtime
        return HostFacts(gpu_total_mb=total, sim=True, state_dir=self.state_dir, python=rt.python,
                         sim_pythonpath=rt.path, sim_module=f"{rt.package}.server")

    def ensure_sim(self) -> list[str]:
        """Create the simulated GPU if missing or stale (nothing on a real GPU host); what changed."""
        return self.sim_setup.ensure() if self.sim else []

    def ensure_helpers(self) -> list[str]:
        """Install the box-side helpers every unit needs (the preflight): plain sh, no gpumod."""
        sudo = not self.sim and self.spec.scope == "system"
        if self.host.write_file(preflight_path(self.state_dir), PREFLIGHT_SCRIPT, mode=0o755, sudo=sudo):
            return ["preflight script"]
        return []

    # -- GPU probe (facts/gpu_read.py reads it) ---------------------------------------------
    @functools.cached_property
    def gpu_reader(self) -> GpuReader:
        return GpuReader(self.host, self.spec.name, backend=self.spec.gpu_backend,
                         shim=self.shim_path if self.sim else None, repair=self.ensure_sim,
                         sim_dir=self.sim_dir if self.sim else None)

    def gpu(self) -> GpuFacts:
        """Total/used/free and per-pid usage, from NVML, nvidia-smi, or the simulator's shim."""
        return self.gpu_reader.read()

    def gpu_fact_argv(self) -> list[str]:
        """The GPU fact as one command (nvidia-smi's CSV, or the simulator's shim), for batching."""
        return self.gpu_reader.fact_argv()

    def parse_gpu_fact(self, exit_code: int, stdout: str) -> GpuFacts:
        return self.gpu_reader.parse_fact(exit_code, stdout)

    def gpu_used_mb(self) -> int:
        """Just the primary GPU's used MB: the cheap query the release poll repeats."""
        return self.gpu_reader.used_mb()

    def quote(self, s: str) -> str:
        return shlex.quote(s)
