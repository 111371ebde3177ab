"""A Target is one host as gpumod drives it: connection, catalog, state dir, service manager,
GPU probe, and whether the GPU is real or simulated."""

from __future__ import annotations

import functools
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from .catalog.model import Catalog
from .errors import GpuProbeError, HostError
from .facts.gpu import APPS_QUERY, GPU_QUERY, MARK, GpuFacts, nvidia_smi_script, parse_nvidia_smi, read_nvml
from .host.base import Host
from .host.local import LocalHost
from .inventory import HostSpec
from .manager import ExecSpec, ServiceManager, Supervisor, Systemd
from .paths import local_state_override
from .render import PREFLIGHT_SCRIPT, HostFacts, preflight_path

SIM_BACKEND = "simulated (nvidia-smi shim)"


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

    @property
    def sim_dir(self) -> str:
        return f"{self.state_dir}/sim"

    @property
    def shim_path(self) -> str:
        return f"{self.sim_dir}/bin/nvidia-smi"

    @property
    def gpu_label(self) -> str:
        return "simulated GPU host" if self.sim else "NVIDIA GPU"

    def header(self) -> str:
        """The first line of every command's output: which host, real or simulated, which manager."""
        what = f"simulated GPU ({self.spec.gpu_name or 'NVIDIA GeForce RTX 4090'}, {self.gpu_total_hint} MB)" if self.sim else "NVIDIA GPU"
        return f"host {self.spec.label}: {what}, services via {self.manager.kind}"

    @property
    def gpu_total_hint(self) -> int:
        return self.spec.gpu_total_mb or 24564

    # -- the simulated GPU --------------------------------------------------------------------
    def sim_lib_dir(self) -> str:
        return f"{self.sim_dir}/lib"

    def render_facts(self, gpu_total_mb: int | None = None) -> HostFacts:
        total = gpu_total_mb or self.spec.gpu_total_mb or (self.gpu_total_hint if self.sim else 0)
        if not self.sim:
            if not total:
                total = self.gpu().primary.total_mb or 0
            return HostFacts(gpu_total_mb=total, sim=False, state_dir=self.state_dir)
        if isinstance(self.host, LocalHost):
            pkg_root = str(Path(__file__).resolve().parent.parent)
            return HostFacts(gpu_total_mb=total, sim=True, state_dir=self.state_dir, python=sys.executable, sim_pythonpath=pkg_root)
        return HostFacts(gpu_total_mb=total, sim=True, state_dir=self.state_dir, python="python3",
                         sim_pythonpath=self.sim_lib_dir(), sim_module="gpumod_sim.server")

    def ensure_sim(self) -> list[str]:
        """Create the simulated GPU (ledger + nvidia-smi shim + preflight) if missing or stale.
        Returns what changed. Remote boxes get the stdlib-only simulator copied to them; a stamp
        makes the unchanged case one round trip."""
        changed: list[str] = []
        if not self.sim:
            return changed
        pkg = Path(__file__).resolve().parent / "sim"
        if isinstance(self.host, LocalHost):
            python, path, mod = sys.executable, str(pkg.parent.parent), "gpumod_tasks.sim"
            self._write_helpers(changed, python, path, mod)
            return self._ensure_ledger(changed, python, path, mod)
        import hashlib

        python, path, mod = "python3", self.sim_lib_dir(), "gpumod_sim"
        files = {f: (pkg / f).read_text() for f in ("__init__.py", "ledger.py", "nvidia_smi.py", "http.py", "server.py", "openai.py", "vllm.py", "llamacpp.py")}
        helpers = self._shim_text(python, path, mod) + PREFLIGHT_SCRIPT
        stamp = hashlib.sha256(("".join(files[k] for k in sorted(files)) + helpers).encode()).hexdigest()
        stamp_file = f"{self.sim_lib_dir()}/gpumod_sim/STAMP"
        if (self.host.read_file(stamp_file) or "").strip() != stamp:
            for f, text in files.items():
                if self.host.write_file(f"{self.sim_lib_dir()}/gpumod_sim/{f}", text):
                    changed.append(f"sim lib {f}")
            self._write_helpers(changed, python, path, mod)
            self.host.write_file(stamp_file, stamp + "\n")
        return self._ensure_ledger(changed, python, path, mod)

    def _shim_text(self, python: str, path: str, mod: str) -> str:
        if isinstance(self.host, LocalHost):
            return (
                f"#!{python} -S\n# gpumod simulated nvidia-smi (generated)\nimport os, sys\n"
                f"sys.path.insert(0, {path!r})\nos.environ.setdefault('GPUMOD_SIM_DIR', {self.sim_dir!r})\n"
                f"from {mod}.nvidia_smi import main\nsys.exit(main())\n"
            )
        # the box's python3 is wherever PATH finds it: a shebang cannot say, sh can
        code = f"import sys; sys.path.insert(0, {path!r}); from {mod}.nvidia_smi import main; sys.exit(main())"
        return (f"#!/bin/sh\n# gpumod simulated nvidia-smi (generated)\n"
                f": ${{GPUMOD_SIM_DIR:={self.sim_dir}}}\nexport GPUMOD_SIM_DIR\n"
                f"exec python3 -S -c {shlex.quote(code)} \"$@\"\n")

    def ensure_helpers(self) -> list[str]:
        """Install the box-side helpers every unit needs (the preflight): plain sh, no gpumod."""
        sudo = not self.sim and self.spec.scope == "system"
        if self.host.write_file(preflight_path(self.state_dir), PREFLIGHT_SCRIPT, mode=0o755, sudo=sudo):
            return ["preflight script"]
        return []

    def _write_helpers(self, changed: list[str], python: str, path: str, mod: str) -> None:
        if self.host.write_file(self.shim_path, self._shim_text(python, path, mod), mode=0o755):
            changed.append("nvidia-smi shim")
        if self.host.write_file(preflight_path(self.state_dir), PREFLIGHT_SCRIPT, mode=0o755):
            changed.append("preflight script")

    def _ensure_ledger(self, changed: list[str], python: str, path: str, mod: str) -> list[str]:
        ledger = f"{self.sim_dir}/gpu0.json"
        name = self.spec.gpu_name or "NVIDIA GeForce RTX 4090"
        lag = float(self.spec.sim_settings.release_lag_s)
        want = (name, self.gpu_total_hint, lag)
        if isinstance(self.host, LocalHost):
            from .sim.ledger import Ledger

            try:
                d = json.loads(Path(ledger).read_text())
                have = (d.get("name"), d.get("total_mb"), d.get("release_lag_s"))
            except (OSError, ValueError):
                have = None
            if have != want:
                Ledger.create(ledger, name=name, total_mb=self.gpu_total_hint, release_lag_s=lag)
                changed.append(f"simulated GPU {name} ({self.gpu_total_hint} MB)")
            return changed
        create = (
            "import sys, json; sys.path.insert(0, sys.argv[1])\n"
            f"from {mod}.ledger import Ledger\np = sys.argv[2]\n"
            "try:\n d = json.load(open(p))\nexcept Exception:\n d = None\n"
            "want = (sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))\n"
            "if d is None or (d.get('name'), d.get('total_mb'), d.get('release_lag_s')) != want:\n"
            " Ledger.create(p, name=want[0], total_mb=want[1], release_lag_s=want[2]); print('created')\n"
        )
        r = self.host.run([python, "-S", "-c", create, path, ledger, name, str(self.gpu_total_hint), str(lag)])
        if "created" in r.stdout:
            changed.append(f"simulated GPU {name} ({self.gpu_total_hint} MB)")
        return changed

    # -- GPU probe ------------------------------------------------------------------------------
    def gpu(self) -> GpuFacts:
        """Total/used/free and per-pid usage, from NVML, nvidia-smi, or the simulator's shim."""
        if self.sim:
            return self._sim_gpu()
        backend = self.spec.gpu_backend
        errors = []
        if backend in ("auto", "nvml") and isinstance(self.host, LocalHost):
            try:
                return read_nvml()
            except Exception as exc:  # NVML missing or failing: fall back to nvidia-smi
                errors.append(f"NVML: {exc}")
                if backend == "nvml":
                    raise GpuProbeError(f"[{self.spec.name}] NVML failed: {exc}") from exc
        try:
            r = self.host.run(["sh", "-c", nvidia_smi_script()], ok=(0, 1, 2, 6, 9, 127))
        except HostError:
            raise
        if r.exit_code == 0:
            return parse_nvidia_smi(r.stdout)
        errors.append(f"nvidia-smi: exit {r.exit_code}: {r.stderr.strip() or r.stdout.strip()}")
        raise GpuProbeError(f"[{self.spec.name}] no GPU backend answered: " + "; ".join(errors))

    def gpu_fact_argv(self) -> list[str]:
        """The GPU fact as one command (nvidia-smi's CSV, or the simulator's shim), for batching."""
        return ["sh", "-c", nvidia_smi_script(self.shim_path if self.sim else "nvidia-smi")]

    def parse_gpu_fact(self, exit_code: int, stdout: str) -> GpuFacts:
        if exit_code == 0:
            return parse_nvidia_smi(stdout, backend=SIM_BACKEND if self.sim else "nvidia-smi")
        return self.gpu()  # the shim may need creating, or the error needs its words: ask directly

    def _sim_gpu(self) -> GpuFacts:
        ok = (0, 1, 2, 9, 126, 127)
        if isinstance(self.host, LocalHost):
            # two short local processes: run the GPU and the process query side by side
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(2) as pool:
                fg = pool.submit(self.host.run, [self.shim_path, f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"], ok=ok)
                fa = pool.submit(self.host.run, [self.shim_path, f"--query-compute-apps={APPS_QUERY}", "--format=csv,noheader,nounits"], ok=ok)
                rg, ra = fg.result(), fa.result()
            if rg.exit_code == 0 and ra.exit_code == 0:
                return parse_nvidia_smi(rg.stdout + MARK + "\n" + ra.stdout, backend=SIM_BACKEND)
            r = rg if rg.exit_code else ra
        else:
            r = self.host.run(self.gpu_fact_argv(), ok=ok)
            if r.exit_code == 0:
                return parse_nvidia_smi(r.stdout, backend=SIM_BACKEND)
        if "No such file" in r.stderr or r.exit_code in (126, 127, 9):
            self.ensure_sim()
            r = self.host.run(self.gpu_fact_argv(), ok=ok)
            if r.exit_code == 0:
                return parse_nvidia_smi(r.stdout, backend=SIM_BACKEND)
        raise GpuProbeError(f"[{self.spec.name}] simulated nvidia-smi failed: {r.stderr.strip()}")

    def gpu_used_mb(self) -> int:
        """Just the primary GPU's used MB: the cheap query the release poll repeats."""
        if not self.sim and isinstance(self.host, LocalHost) and self.spec.gpu_backend in ("auto", "nvml"):
            try:
                return self.gpu().primary.used_mb or 0
            except GpuProbeError:
                pass
        binary = self.shim_path if self.sim else "nvidia-smi"
        r = self.host.run([binary, "--query-gpu=memory.used", "--format=csv,noheader,nounits"], ok=(0, 2, 9, 127))
        if r.exit_code != 0:
            raise GpuProbeError(f"[{self.spec.name}] nvidia-smi failed: {r.stderr.strip() or r.exit_code}")
        first = r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""
        try:
            return int(first.split(",")[0].strip())
        except ValueError:
            raise GpuProbeError(f"[{self.spec.name}] nvidia-smi memory.used unreadable: {first!r}") from None

    def install_spec(self, unit: str, text: str, spec: object) -> bool:
        """Install one unit (systemd file or supervisor spec); returns whether it changed."""
        if isinstance(self.manager, Supervisor):
            return self.manager.install(unit, spec)  # type: ignore[arg-type]
        if isinstance(spec, ExecSpec) and spec.env_file:
            from .render import write_env_file

            write_env_file(self.host, spec, sudo=self.spec.scope == "system")
        unit_dir = self.host.expand(self.spec.resolved_unit_dir(self.host.home))
        return self.host.write_file(f"{unit_dir}/{unit}", text, sudo=self.spec.scope == "system")

    def quote(self, s: str) -> str:
        return shlex.quote(s)
