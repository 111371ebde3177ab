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

from .host.base import Host
from .interpreter import this_python
from .inventory import HostSpec
from .render import PREFLIGHT_SCRIPT, preflight_path

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
    """The simulated GPU of one host, under ``<state_dir>/sim``."""

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
        return f"{self.sim_dir}/gpu0.json"

    @property
    def gpu_name(self) -> str:
        return self.spec.gpu_name or DEFAULT_GPU_NAME

    @property
    def total_mb(self) -> int:
        return self.spec.gpu_total_mb or DEFAULT_TOTAL_MB

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
        name, total = self.gpu_name, self.total_mb
        lag = float(self.spec.sim_settings.release_lag_s)
        want = (name, total, lag)
        if self.host.colocated:
            from .sim.ledger import Ledger

            try:
                d = json.loads(Path(self.ledger_path).read_text())
                have = (d.get("name"), d.get("total_mb"), d.get("release_lag_s"))
            except (OSError, ValueError, AttributeError):
                have = None
            if have != want:
                Ledger.create(self.ledger_path, name=name, total_mb=total, release_lag_s=lag)
                changed.append(f"simulated GPU {name} ({total} MB)")
            return changed
        rt = self.runtime
        create = (
            "import sys, json; sys.path.insert(0, sys.argv[1])\n"
            f"from {rt.package}.ledger import Ledger\np = sys.argv[2]\n"
            "try:\n d = json.load(open(p))\nexcept Exception:\n d = None\n"
            "want = (sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))\n"
            "if not isinstance(d, dict) or (d.get('name'), d.get('total_mb'), d.get('release_lag_s')) != want:\n"
            " Ledger.create(p, name=want[0], total_mb=want[1], release_lag_s=want[2]); print('created')\n"
        )
        r = self.host.run([rt.python, "-S", "-c", create, rt.path, self.ledger_path, name, str(total), str(lag)])
        if "created" in r.stdout:
            changed.append(f"simulated GPU {name} ({total} MB)")
        return changed
