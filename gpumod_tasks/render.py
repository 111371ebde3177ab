"""Render what a service runs (``ExecSpec``) and its systemd unit text.

The command line of each driver is built here as an argv list (easy to test, quoted once); the
unit file around it comes from ``templates/systemd/<template>.service.j2``.  On a simulated host
the same preset renders the stand-in server with the same port, VRAM and sleep behaviour.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalog.model import Catalog, Driver, Preset, SleepMode
from .errors import RenderError
from .inventory import HostSpec
from .manager import ExecSpec

UNSAFE_MOUNT_SOURCES = ("/", "/etc", "/var/run/docker.sock", "/run/docker.sock", "/proc", "/sys", "/dev", "/boot", "/root")
UNSAFE_DOCKER_FLAGS = ("--privileged", "--pid=host", "--ipc=host", "--cap-add=ALL", "--userns=host")


@dataclass(frozen=True)
class HostFacts:
    """What rendering needs to know about the target."""

    gpu_total_mb: int
    sim: bool
    state_dir: str  # expanded
    python: str = "python3"
    sim_pythonpath: str = ""  # where the simulator package lives on the box
    sim_module: str = "gpumod_tasks.sim.server"


def preflight_path(state_dir: str) -> str:
    return f"{state_dir}/bin/gpumod-preflight"


# The host-freeze preflight, installed on the box (agentless: plain sh + awk, no gpumod there).
PREFLIGHT_SCRIPT = r"""#!/bin/sh
# gpumod host-freeze preflight (generated). Refuses to start a model when RAM is short:
# loading pins host memory, and a short allocation can hang the NVIDIA driver with no OOM message.
# usage: gpumod-preflight SERVICE MODEL_SIZE_MB [FACTOR] [MARGIN_MB] [MEMINFO]
svc=$1; size=${2:-0}; factor=${3:-1.1}; margin=${4:-1024}; meminfo=${5:-/proc/meminfo}
avail=$(awk '/^MemAvailable:/ {print int($2/1024)}' "$meminfo")
need=$(awk -v s="$size" -v f="$factor" -v m="$margin" 'BEGIN {print int(s*f + m + 0.999)}')
if [ -z "$avail" ]; then echo "gpumod-preflight: cannot read MemAvailable from $meminfo" >&2; exit 1; fi
if [ "$avail" -lt "$need" ]; then
  echo "gpumod-preflight: refusing to start $svc: MemAvailable ${avail} MB < needed ${need} MB (model_size_mb ${size} x ${factor} + ${margin} MB)" >&2
  exit 1
fi
echo "gpumod-preflight: $svc ok: MemAvailable ${avail} MB >= needed ${need} MB"
"""


def gpu_memory_utilization(vram_mb: int, total_mb: int) -> float:
    """vLLM takes a fraction of *total* device memory; users think in MB.  Round up to 3 decimals
    so the budget is never below the preset's figure, and cap at 0.99."""
    if total_mb <= 0:
        raise RenderError("GPU total memory is unknown; declare gpu.total_mb in the inventory")
    return min(0.99, math.ceil(vram_mb / total_mb * 1000) / 1000)


def _fmt(value: Any, preset: Preset) -> str:
    return str(value).replace("{port}", str(preset.port)).replace("{id}", preset.id).replace("{model}", preset.model_id or preset.model_path)


def router_model_name(preset: Preset) -> str:
    """Name of the model inside a llama.cpp router: unit_vars.router_model, else what the router
    itself calls a ``--models-dir`` entry (a file's name without .gguf, or a directory's name),
    else the id."""
    if preset.unit_vars.get("router_model"):
        return str(preset.unit_vars["router_model"])
    if preset.model_path:
        name = Path(preset.model_path).name
        return name[: -len(".gguf")] if name.endswith(".gguf") else name
    return preset.id


def model_file(preset: Preset, host: HostSpec) -> str:
    """The model path on the box: a host's ``models_dir`` var re-roots the preset's file name."""
    root = host.vars.get("models_dir")
    if root and preset.model_path:
        return f"{str(root).rstrip('/')}/{Path(preset.model_path).name}"
    return preset.model_path


def real_exec(preset: Preset, host: HostSpec, facts: HostFacts) -> ExecSpec:
    uv = {**host.vars, **preset.unit_vars}
    # the listen address comes from the preset alone: a host-wide var must never expose every
    # server (and vLLM's dev endpoints) on 0.0.0.0 by accident
    bind = str(preset.unit_vars.get("bind", "127.0.0.1"))
    env: list[tuple[str, str]] = []
    if preset.driver is Driver.VLLM:
        argv = [str(uv.get("vllm_bin", "vllm")), "serve", preset.model_path or preset.model_id, "--host", bind, "--port", str(preset.port),
                "--served-model-name", preset.served_model,
                "--gpu-memory-utilization", f"{gpu_memory_utilization(preset.vram_mb, facts.gpu_total_mb):g}"]
        if preset.context_size:
            argv += ["--max-model-len", str(preset.context_size)]
        if uv.get("task"):
            argv += ["--task", str(uv["task"])]
        if preset.can_sleep:
            argv.append("--enable-sleep-mode")
            env.append(("VLLM_SERVER_DEV_MODE", "1"))
        argv += [str(a) for a in uv.get("extra_args", [])]
    elif preset.driver is Driver.LLAMACPP:
        argv = [str(uv.get("llama_server_bin", "llama-server")), "--host", bind, "--port", str(preset.port)]
        if preset.sleep_mode is SleepMode.ROUTER:
            models_dir = str(uv.get("models_dir") or (str(Path(preset.model_path).parent) if preset.model_path else ""))
            if uv.get("models_preset"):
                argv += ["--models-preset", str(uv["models_preset"])]
            if models_dir:
                argv += ["--models-dir", models_dir]
            argv += ["--models-max", str(uv.get("models_max", 1))]
            if not uv.get("autoload", False):
                argv.append("--no-models-autoload")
        else:
            argv += ["--model", model_file(preset, host), "--alias", preset.served_model]
        if preset.context_size:
            argv += ["--ctx-size", str(preset.context_size)]
        if "n_gpu_layers" in uv:
            argv += ["--n-gpu-layers", str(uv["n_gpu_layers"])]
        if "parallel" in uv:
            argv += ["--parallel", str(uv["parallel"])]
        argv += [str(a) for a in uv.get("extra_args", [])]
        # pinned host buffers can hang the NVIDIA driver and freeze the host; presence disables them
        env.append(("GGML_CUDA_NO_PINNED", "1"))
    elif preset.driver is Driver.FASTAPI:
        cmd = uv.get("command")
        if not isinstance(cmd, list) or not cmd:
            raise RenderError(f"{preset.file}: unit_vars.command must be a non-empty list for driver fastapi")
        argv = [_fmt(a, preset) for a in cmd]
        venv = uv.get("venv")
        if venv and argv[0] in ("python", "python3"):
            argv[0] = f"{venv}/bin/python"
        elif venv and "/" not in argv[0]:
            argv[0] = f"{venv}/bin/{argv[0]}"
    elif preset.driver is Driver.DOCKER:
        argv = docker_argv(preset)
    else:  # pragma: no cover
        raise RenderError(f"unknown driver {preset.driver}")
    # the driver's safety variables win over anything the preset sets
    merged = dict(_common_env(preset, host))
    merged.update(env)
    return ExecSpec(argv=tuple(argv), env=tuple(merged.items()), pre=(_preflight(preset, host, facts),))


def docker_argv(preset: Preset) -> list[str]:
    d = preset.docker
    if d is None:
        raise RenderError(f"{preset.file}: driver docker needs a docker: mapping")
    if d.network in ("host",) or d.network.startswith("macvlan"):
        raise RenderError(f"{preset.file}: docker.network {d.network!r} is refused (host and macvlan networks bypass isolation)")
    for a in d.extra_args:
        if a in UNSAFE_DOCKER_FLAGS or a.startswith("--privileged") or a.startswith("--network=host") or a.startswith("--net=host"):
            raise RenderError(f"{preset.file}: docker.extra_args {a!r} is refused")
    for v in d.volumes:
        src = v.split(":", 1)[0].rstrip("/") or "/"
        if src in UNSAFE_MOUNT_SOURCES or src.endswith("docker.sock"):
            raise RenderError(f"{preset.file}: docker.volumes {v!r} is refused (mounting {src} into a container is unsafe)")
    argv = ["docker", "run", "--rm", "--name", f"gpumod-{preset.id}", "--gpus", "all"]
    if d.network:
        argv += ["--network", d.network]
    ports = d.ports or (f"127.0.0.1:{preset.port}:{preset.port}",)
    for p in ports:
        argv += ["-p", p if p.count(":") >= 2 else f"127.0.0.1:{p}"]
    for v in d.volumes:
        argv += ["-v", v]
    for k, val in d.environment:
        argv += ["-e", f"{k}={val}"]
    argv += list(d.extra_args)
    argv.append(d.image)
    argv += list(d.command)
    return argv


def _common_env(preset: Preset, host: HostSpec) -> tuple[tuple[str, str], ...]:
    env = dict(preset.env)
    if "hf_home" in host.vars:
        env.setdefault("HF_HOME", str(host.vars["hf_home"]))
    env.setdefault("CUDA_VISIBLE_DEVICES", str(preset.unit_vars.get("cuda_visible_devices", host.vars.get("cuda_visible_devices", "0"))))
    return tuple(env.items())


def _preflight(preset: Preset, host: HostSpec, facts: HostFacts) -> tuple[str, ...]:
    meminfo = f"{host.procfs.rstrip('/')}/meminfo"
    return (preflight_path(facts.state_dir), preset.id, str(preset.model_size_mb), f"{host.preflight_factor:g}", str(host.preflight_margin_mb), meminfo)


def metered_exec(preset: Preset, host: HostSpec, facts: HostFacts, peers: tuple[Preset, ...] = ()) -> ExecSpec:
    """The real server's command line under the simulator's meter (a simulated host's ``sim_real``)."""
    real = real_exec(preset, host, facts)
    lag = preset.sim.get("release_lag_s", host.sim_settings.release_lag_s)
    meter_mod = facts.sim_module.rsplit(".", 1)[0] + ".meter"
    argv = [facts.python, "-m", meter_mod, "--sim-dir", f"{facts.state_dir}/sim", "--port", str(preset.port),
            "--release-lag-s", f"{lag:g}"]
    if preset.sleep_mode is SleepMode.ROUTER:
        for p in peers or (preset,):
            argv += ["--model", f"{router_model_name(p)}={p.vram_mb}"]
    else:
        argv += ["--vram-mb", str(preset.vram_mb)]
    env = dict(real.env)
    if facts.sim_pythonpath:
        env["PYTHONPATH"] = facts.sim_pythonpath
    return ExecSpec(argv=(*argv, "--", *real.argv), env=tuple(env.items()), pre=real.pre)


def sim_exec(preset: Preset, host: HostSpec, facts: HostFacts, peers: tuple[Preset, ...] = ()) -> ExecSpec:
    """The stand-in that plays this preset on a simulated GPU host."""
    if preset.driver.value in host.sim_real:
        return metered_exec(preset, host, facts, peers)
    t = host.sim_settings
    sim = preset.sim
    flavor = {"vllm": "vllm", "llamacpp": "llamacpp", "fastapi": "fastapi", "docker": "fastapi"}[preset.driver.value]
    argv = [facts.python, "-m", facts.sim_module, "--flavor", flavor, "--port", str(preset.port),
            "--sim-dir", f"{facts.state_dir}/sim",
            "--load-s", f"{sim.get('load_s', t.load_s):g}",
            "--wake-l1-s", f"{sim.get('wake_l1_s', t.wake_l1_s):g}",
            "--wake-l2-s", f"{sim.get('wake_l2_s', t.wake_l2_s):g}",
            "--release-lag-s", f"{sim.get('release_lag_s', t.release_lag_s):g}"]
    for key in ("infer_s", "stream_delay_s"):  # per-request delays, for queueing and streaming demos
        if sim.get(key):
            argv += [f"--{key.replace('_', '-')}", f"{sim[key]:g}"]
    env: dict[str, str] = dict(_common_env(preset, host))
    if facts.sim_pythonpath:
        env["PYTHONPATH"] = facts.sim_pythonpath
    if preset.driver is Driver.LLAMACPP and preset.sleep_mode is SleepMode.ROUTER:
        argv += ["--models-max", str(preset.unit_vars.get("models_max", 1)), "--no-models-autoload"]
        for p in peers or (preset,):
            argv += ["--sim-model", f"{router_model_name(p)}={p.vram_mb}"]
        env["GGML_CUDA_NO_PINNED"] = "1"
    elif preset.driver is Driver.LLAMACPP:
        argv += ["--model", preset.model_path or preset.id, "--alias", preset.served_model, "--vram-mb", str(preset.vram_mb)]
        env["GGML_CUDA_NO_PINNED"] = "1"
    else:
        argv += ["--model", preset.model_id or preset.id, "--served-model-name", preset.served_model,
                 "--vram-mb", str(preset.vram_mb), "--sleep-vram-mb", str(preset.residual_mb)]
        if preset.context_size:
            argv += ["--max-model-len", str(preset.context_size)]
        if preset.can_sleep:
            argv.append("--enable-sleep-mode")
            if preset.driver is Driver.VLLM:
                env["VLLM_SERVER_DEV_MODE"] = "1"
    return ExecSpec(argv=tuple(argv), env=tuple(env.items()), pre=(_preflight(preset, host, facts),))


def exec_spec(preset: Preset, host: HostSpec, facts: HostFacts, peers: tuple[Preset, ...] = ()) -> ExecSpec:
    """What the unit of ``preset`` runs; ``peers`` are all presets of a shared router (lead first)."""
    return sim_exec(preset, host, facts, peers) if facts.sim else real_exec(preset, host, facts)


# -- systemd quoting ----------------------------------------------------------------------------

_SAFE_WORD = re.compile(r"^[A-Za-z0-9_./:=,@+-]+$")


def systemd_word(arg: str) -> str:
    """Quote one argv word for ExecStart= (systemd splits like a shell, and expands % and $)."""
    s = arg.replace("%", "%%")
    if _SAFE_WORD.match(arg):
        return s
    s = s.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")
    return f'"{s}"'


def systemd_env(key: str, value: str) -> str:
    """One Environment= assignment, quoted so spaces, quotes, % and $ survive verbatim."""
    v = value.replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{key}={v}"'


def systemd_command(argv: tuple[str, ...]) -> str:
    return " ".join(systemd_word(a) for a in argv)


def template_dirs(project_root: str) -> list[str]:
    return [str(Path(project_root) / "templates")]


def jinja_env(project_root: str) -> Any:
    """The unit templates' environment, with the systemd quoting filters."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(template_dirs(project_root)), undefined=StrictUndefined,
                      keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["systemd_command"] = systemd_command
    env.filters["systemd_env"] = lambda kv: systemd_env(kv[0], kv[1])
    return env


def unit_for(catalog: Catalog, preset: Preset, host: HostSpec, facts: HostFacts, project_root: str) -> tuple[str, ExecSpec]:
    """Unit text and ExecSpec of the unit that serves ``preset`` (a shared router's lead renders it)."""
    peers = catalog.unit_peers(preset)
    lead = peers[0]
    spec = exec_spec(lead, host, facts, peers)
    return render_unit(lead, host, facts, project_root, spec, peers), spec


def render_unit(preset: Preset, host: HostSpec, facts: HostFacts, project_root: str, spec: ExecSpec | None = None,
                peers: tuple[Preset, ...] = ()) -> str:
    """The full systemd unit text for a preset on a host."""
    spec = spec or exec_spec(preset, host, facts, peers)
    env = jinja_env(project_root)
    name = preset.unit_template or f"systemd/{preset.driver.value}.service.j2"
    deps = [f"gpumod-{d}.service" for d in preset.depends_on]
    return env.get_template(name).render(
        preset=preset, host=host, facts=facts, spec=spec, deps=deps, simulated=facts.sim,
        router_models=[p.id for p in peers] if preset.router else [],
        user_scope=host.scope == "user", generator="gpumod",
    )


DAEMON_UNIT = "gpumod.service"


def render_daemon_unit(host: HostSpec, facts: HostFacts, project_root: str, *, local: bool) -> str:
    """The router daemon's unit: ``python -m gpumod_tasks.program router.serve`` on the box."""
    rd = host.router_daemon or {}
    python = sys.executable if local else str(host.vars.get("gpumod_python", "python3"))
    argv = (python, "-m", "gpumod_tasks.program", "router.serve", "--port", str(rd.get("port", 8787)),
            "--bind", str(rd.get("bind", "127.0.0.1")), "--as-host", host.name,
            *(("--reconcile-s", str(rd["reconcile_s"])) if rd.get("reconcile_s") else ()))
    env: list[tuple[str, str]] = []
    home = project_root if local else host.vars.get("gpumod_home")
    if home:
        env.append(("GPUMOD_HOME", str(home)))
    if local:
        from .paths import inventory_path

        env.append(("PYTHONPATH", str(Path(__file__).resolve().parent.parent)))
        env.append(("GPUMOD_INVENTORY", str(Path(inventory_path(project_root)).resolve())))
    if rd.get("api_key_file"):
        env.append(("GPUMOD_ROUTER_API_KEY_FILE", str(rd["api_key_file"])))
    return jinja_env(project_root).get_template("systemd/gpumod.service.j2").render(host=host, argv=argv, env=env, user_scope=host.scope == "user")


def local_sim_facts(state_dir: str, gpu_total_mb: int) -> HostFacts:
    """Facts for a simulated host on this machine: the stand-in runs from this installation."""
    pkg_root = str(Path(__file__).resolve().parent.parent)
    return HostFacts(gpu_total_mb=gpu_total_mb, sim=True, state_dir=state_dir, python=sys.executable, sim_pythonpath=pkg_root)
