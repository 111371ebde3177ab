"""Setting up the simulated GPU on a host: the VRAM ledger, the nvidia-smi shim, the preflight, and
(on a box that does not share this machine's disk) a copy of the simulator package.

This is not part of ``gpumod_tasks/sim``: that package is what gets copied to a remote box and run
there by its bare ``python3``, so it stays stdlib-only and knows nothing of hosts; the set-up here
drives a box through gpumod's ``Host`` and so lives on the controller's side.

What a remote box receives is derived from the package itself (every ``.py`` under
``gpumod_tasks/sim``, ``sim_package_files``), so a module added to the simulator is shipped
without anyone having to list it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from .errors import SettingInvalid
from .host.base import Host
from .interpreter import this_python
from .inventory import GpuDecl, HostSpec
from .render import PREFLIGHT_SCRIPT, preflight_path
from .sim.ledger import sim_uuid

SIM_PACKAGE = Path(__file__).resolve().parent / "sim"
#: the simulator's package name on a box that gets a copy of it
REMOTE_PACKAGE = "gpumod_sim"
DEFAULT_GPU_NAME = "NVIDIA GeForce RTX 4090"
DEFAULT_TOTAL_MB = 24564


def sim_package_files() -> dict[str, str]:
    """Every module of the simulator package, by its path inside the package: what a remote
    simulated box receives."""
    return {p.relative_to(SIM_PACKAGE).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(SIM_PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


@dataclass(frozen=True)
class SimRuntime:
    """How the simulator runs on the box: which interpreter, what goes on its path, the package."""

    python: str
    path: str
    package: str


class SimSetup:
    """The simulated GPUs of one host, under ``<state_dir>/sim``: one ledger per declared GPU
    (``gpu0.json`` .. ``gpuN-1.json``; none declared: one RTX 4090 profile), each with a UUID made
    from the host's name and the GPU's index (``sim.ledger.sim_uuid``), so a pin by UUID holds.

    Changing the declaration: a GPU whose name, size or lag changed is updated in place and keeps
    its allocations (running stand-ins stay counted); a GPU added gets a new ledger; a GPU removed
    loses its ledger only when no live process holds memory on it; otherwise the set-up is refused
    (SettingInvalid naming the pids) until its services stop or ``sim.reset`` runs, so a running
    service's charge is never dropped silently."""

    def __init__(self, host: Host, spec: HostSpec, state_dir: str):
        self.host = host
        self.spec = spec
        self.state_dir = state_dir

    @property
    def sim_dir(self) -> str:
        return f"{self.state_dir}/sim"

    @property
    def shim_path(self) -> str:
        return f"{self.sim_dir}/bin/nvidia-smi"

    @property
    def lib_dir(self) -> str:
        return f"{self.sim_dir}/lib"

    @property
    def ledger_path(self) -> str:
        """GPU 0's ledger."""
        return self.ledger_paths[0]

    @property
    def ledger_paths(self) -> list[str]:
        return [f"{self.sim_dir}/gpu{i}.json" for i in range(len(self.gpus))]

    @property
    def gpus(self) -> tuple[GpuDecl, ...]:
        """The simulated GPUs, defaults filled in (none declared: one RTX 4090 profile)."""
        return tuple(GpuDecl(g.name or DEFAULT_GPU_NAME, g.total_mb or DEFAULT_TOTAL_MB)
                     for g in (self.spec.declared_gpus or (GpuDecl(),)))

    @property
    def uuids(self) -> list[str]:
        return [sim_uuid(self.spec.name, i) for i in range(len(self.gpus))]

    @property
    def gpu_name(self) -> str:
        """GPU 0's name."""
        return self.gpus[0].name

    @property
    def total_mb(self) -> int:
        """GPU 0's total."""
        return self.gpus[0].total_mb

    def ledger_specs(self) -> list[dict[str, object]]:
        """What ``sim.ledger.ensure_gpus`` makes of this host's declaration."""
        lag = float(self.spec.sim_settings.release_lag_s)
        return [{"name": g.name, "total_mb": g.total_mb, "uuid": u, "release_lag_s": lag} for g, u in zip(self.gpus, self.uuids)]

    @property
    def runtime(self) -> SimRuntime:
        if self.host.colocated:  # this interpreter and this checkout are there as they are
            return SimRuntime(this_python(), str(SIM_PACKAGE.parent.parent), "gpumod_tasks.sim")
        return SimRuntime("python3", self.lib_dir, REMOTE_PACKAGE)

    # -- set-up -------------------------------------------------------------------------------
    def ensure(self) -> list[str]:
        """Create the simulated GPU (ledger + nvidia-smi shim + preflight) if missing or stale.
        Returns what changed. A remote box gets the simulator package copied to it; a stamp makes
        the unchanged case one round trip."""
        changed: list[str] = []
        if self.host.colocated:
            self._write_helpers(changed)
            return self._ensure_ledger(changed)
        files = sim_package_files()
        helpers = self.shim_text() + PREFLIGHT_SCRIPT
        stamp = hashlib.sha256(("".join(f"{k}\0{files[k]}" for k in sorted(files)) + helpers).encode()).hexdigest()
        pkg_dir = f"{self.lib_dir}/{REMOTE_PACKAGE}"
        stamp_file = f"{pkg_dir}/STAMP"
        if (self.host.read_file(stamp_file) or "").strip() != stamp:
            for f, text in files.items():
                if self.host.write_file(f"{pkg_dir}/{f}", text):
                    changed.append(f"sim lib {f}")
            self._write_helpers(changed)
            self.host.write_file(stamp_file, stamp + "\n")
        return self._ensure_ledger(changed)

    def shim_text(self) -> str:
        rt = self.runtime
        if self.host.colocated:
            return (
                f"#!{rt.python} -S\n# gpumod simulated nvidia-smi (generated)\nimport os, sys\n"
                f"sys.path.insert(0, {rt.path!r})\nos.environ.setdefault('GPUMOD_SIM_DIR', {self.sim_dir!r})\n"
                f"from {rt.package}.nvidia_smi import main\nsys.exit(main())\n"
            )
        # the box's python3 is wherever PATH finds it: a shebang cannot say, sh can
        code = f"import sys; sys.path.insert(0, {rt.path!r}); from {rt.package}.nvidia_smi import main; sys.exit(main())"
        return (f"#!/bin/sh\n# gpumod simulated nvidia-smi (generated)\n"
                f": ${{GPUMOD_SIM_DIR:={self.sim_dir}}}\nexport GPUMOD_SIM_DIR\n"
                f"exec python3 -S -c {shlex.quote(code)} \"$@\"\n")

    def _write_helpers(self, changed: list[str]) -> None:
        if self.host.write_file(self.shim_path, self.shim_text(), mode=0o755):
            changed.append("nvidia-smi shim")
        if self.host.write_file(preflight_path(self.state_dir), PREFLIGHT_SCRIPT, mode=0o755):
            changed.append("preflight script")

    def _ensure_ledger(self, changed: list[str]) -> list[str]:
        specs = self.ledger_specs()
        # in-process only on this machine itself: whether a GPU is still held depends on which pids
        # live, and a namespace's (nsenter) pids are its own, so there it runs inside, as remotely
        if self.host.is_this_machine:
            from .sim.ledger import GpuStillHeld, ensure_gpus

            try:
                changed += ensure_gpus(self.sim_dir, specs)
            except GpuStillHeld as exc:
                raise self._held(str(exc)) from None
            return changed
        rt = self.runtime
        create = (
            "import sys, json; sys.path.insert(0, sys.argv[1])\n"
            f"from {rt.package}.ledger import GpuStillHeld, ensure_gpus\n"
            "try:\n print(json.dumps({'changed': ensure_gpus(sys.argv[2], json.loads(sys.argv[3]))}))\n"
            "except GpuStillHeld as exc:\n print(json.dumps({'held': str(exc)}))\n"
        )
        r = self.host.run([rt.python, "-S", "-c", create, rt.path, self.sim_dir, json.dumps(specs)])
        try:
            answer = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise SettingInvalid(f"{self.spec.name}: setting up the simulated GPUs failed: {r.stderr.strip() or r.stdout.strip()}") from None
        if "held" in answer:
            raise self._held(answer["held"])
        changed += answer["changed"]
        return changed

    def _held(self, why: str) -> SettingInvalid:
        return SettingInvalid(f"{self.spec.name}: {why} (inv -H {self.spec.name} sim.reset stops every service and starts the GPUs empty)")
