"""Render what a service runs (``ExecSpec``) and its systemd unit text.

Each engine builds its command line as an argv list (``engines/<driver>.py``); this module adds
what every unit shares (preflight, environment, the private environment file) and quotes it once
into the unit from ``templates/systemd/<template>.service.j2``.  Every value written into a unit
is checked again here for control characters (a newline would add a directive), whatever the
catalog's validation let through.  On a simulated host the same preset renders the stand-in
server with the same port, VRAM and sleep behaviour.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalog.model import Catalog, GpuAssignment, Preset, SleepMode
from .engines import Command, engine_for, upstream_name
from .engines import docker as engines_docker
from .engines import llamacpp as engines_llamacpp
from .engines import vllm as engines_vllm
from .envfile import env_digest, env_file_path, no_control
from .hostfacts import HostFacts
from .interpreter import this_python
from .inventory import HostSpec, SimSettings
from .service_manager import ExecSpec

if TYPE_CHECKING:
    pass


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


# moved to their engine; these names stay for callers that render
gpu_memory_utilization = engines_vllm.gpu_memory_utilization
router_model_name = engines_llamacpp.router_model_name
model_file = engines_llamacpp.model_file
UNSAFE_MOUNT_SOURCES = engines_docker.UNSAFE_MOUNT_SOURCES


def listen_address(preset: Preset) -> str:
    """Where a real server listens: the preset's ``unit_vars.bind`` alone (default loopback).  A
    host-wide var never sets it, so one inventory line cannot expose every server (and vLLM's dev
    endpoints) on 0.0.0.0; ``extra_args`` that try are refused (``engines.base.extra_args``)."""
    return str(preset.unit_vars.get("bind", "127.0.0.1"))


def real_exec(preset: Preset, host: HostSpec, facts: HostFacts, placement: GpuAssignment | None = None) -> ExecSpec:
    cmd = engine_for(preset).command(preset, host, facts, listen_address(preset))
    if placement is not None and preset.docker is not None:
        cmd = Command(engines_docker.gpus_flag(cmd.argv, placement.visible_devices), cmd.env, cmd.private_env)
    return _spec(preset, host, facts, cmd, dict(_common_env(preset, host, placement)))


def _spec(preset: Preset, host: HostSpec, facts: HostFacts, cmd: Command, env: dict[str, str]) -> ExecSpec:
    """The ExecSpec around an engine's command: the preset's ``env`` (and a container's environment)
    go to the private environment file; gpumod's own variables stay in the unit, and the engine's
    safety variables win over anything the preset sets."""
    private = {k: v for k, v in preset.env}
    private.update(cmd.private_env)
    public = {k: v for k, v in env.items() if k not in private}
    for k, v in cmd.env:
        private.pop(k, None)
        public[k] = v
    env_file = env_file_path(facts.state_dir, preset.unit) if private else ""
    pre = (_preflight(preset, host, facts),)
    # refused here too, so a supervisor script (quoted by shlex, not by the unit filters) is held to
    # the same rule as a systemd unit
    for word in (*cmd.argv, *pre[0], env_file):
        no_control(word, f"{preset.file or preset.id}: a command-line word")
    for k, v in (*public.items(), *private.items()):
        no_control(k, f"{preset.file or preset.id}: an environment variable name")
        no_control(v, f"{preset.file or preset.id}: environment variable {k}")
    return ExecSpec(argv=cmd.argv, env=tuple(public.items()), pre=pre, private_env=tuple(private.items()), env_file=env_file)


def docker_argv(preset: Preset, bind: str = "127.0.0.1") -> list[str]:
    """``docker run`` of a container preset (refuses what would bypass its isolation)."""
    return list(engines_docker.ENGINE.command(preset, HostSpec(name="-"), HostFacts(0, False, ""), bind).argv)


def _common_env(preset: Preset, host: HostSpec, placement: GpuAssignment | None = None) -> tuple[tuple[str, str], ...]:
    """The variables every unit gets. The GPUs: a placed service (a box with several GPUs) gets its
    placement, ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and ``CUDA_VISIBLE_DEVICES`` by UUID where known, so a
    reboot that reorders the GPUs cannot move a model. A preset's own ``CUDA_VISIBLE_DEVICES`` (its
    ``env`` or ``unit_vars.cuda_visible_devices``, which the catalog reads as its pin) is kept as
    written. Without a placement (a box with one GPU) the unit is what it always was: the host's
    ``vars.cuda_visible_devices``, default "0", and no CUDA_DEVICE_ORDER. That is deliberate:
    upgrading must not change, and so restart, every unit on every one-GPU box."""
    env = dict(preset.env)
    if "hf_home" in host.vars:
        env.setdefault("HF_HOME", str(host.vars["hf_home"]))
    own = preset.unit_vars.get("cuda_visible_devices")
    if placement is not None and own is None:
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        env.setdefault("CUDA_VISIBLE_DEVICES", placement.visible_devices)
    env.setdefault("CUDA_VISIBLE_DEVICES", str(own if own is not None else host.vars.get("cuda_visible_devices", "0")))
    return tuple(env.items())


def _preflight(preset: Preset, host: HostSpec, facts: HostFacts) -> tuple[str, ...]:
    meminfo = f"{host.procfs.rstrip('/')}/meminfo"
    return (preflight_path(facts.state_dir), preset.id, str(preset.model_size_mb), f"{host.preflight_factor:g}", str(host.preflight_margin_mb), meminfo)


def metered_exec(preset: Preset, host: HostSpec, facts: HostFacts, peers: tuple[Preset, ...] = (),
                 placement: GpuAssignment | None = None) -> ExecSpec:
    """The real server's command line under the simulator's meter (a simulated host's ``sim_real``)."""
    real = real_exec(preset, host, facts, placement)
    lag = preset.sim.get("release_lag_s", host.sim_settings.release_lag_s)
    meter_mod = facts.sim_module.rsplit(".", 1)[0] + ".meter"
    argv = [facts.python, "-m", meter_mod, "--sim-dir", f"{facts.state_dir}/sim", "--port", str(preset.port),
            "--release-lag-s", f"{lag:g}"]
    if preset.sleep_mode is SleepMode.ROUTER:
        for p in peers or (preset,):
            argv += ["--model", f"{upstream_name(p)}={p.vram_mb}"]
    else:
        argv += ["--vram-mb", str(preset.vram_mb)]
    env = dict(real.env)
    if facts.sim_pythonpath:
        env["PYTHONPATH"] = facts.sim_pythonpath
    return replace(real, argv=(*argv, "--", *real.argv), env=tuple(env.items()))


def sim_exec(preset: Preset, host: HostSpec, facts: HostFacts, peers: tuple[Preset, ...] = (),
             placement: GpuAssignment | None = None) -> ExecSpec:
    """The stand-in that plays this preset on a simulated GPU host (its GPUs in the same
    ``CUDA_VISIBLE_DEVICES`` as the real unit; ``--vram-mb`` its total, and its TP size or split)."""
    if preset.driver.value in host.sim_real:
        return metered_exec(preset, host, facts, peers, placement)
    t = host.sim_settings
    sim = preset.sim
    engine = engine_for(preset)
    argv = [facts.python, "-m", facts.sim_module, "--flavor", engine.sim_flavor, "--port", str(preset.port),
            "--sim-dir", f"{facts.state_dir}/sim",
            "--load-s", f"{sim.get('load_s', t.load_s):g}",
            "--wake-l1-s", f"{sim.get('wake_l1_s', t.wake_l1_s):g}",
            "--wake-l2-s", f"{sim.get('wake_l2_s', t.wake_l2_s):g}",
            "--release-lag-s", f"{sim.get('release_lag_s', t.release_lag_s):g}"]
    for key in ("infer_s", "stream_delay_s"):  # per-request delays, for queueing and streaming demos
        if sim.get(key):
            argv += [f"--{key.replace('_', '-')}", f"{sim[key]:g}"]
    argv += sim_footprint(preset, t)
    env: dict[str, str] = dict(_common_env(preset, host, placement))
    if facts.sim_pythonpath:
        env["PYTHONPATH"] = facts.sim_pythonpath
    stand_in = engine.stand_in_args(preset, peers)
    return _spec(preset, host, facts, Command((*argv, *stand_in.argv), stand_in.env), env)


# What a sleeping vLLM holds per GPU by the published figures (shared/reference/servers.md D2):
# ~774 MiB at tensor-parallel 1 (CUDA context + graph pool), 2.4 GiB and more per GPU under TP.
PUBLISHED_VLLM_ASLEEP_MB = {1: 774, 2: 2458}


def sim_footprint(preset: Preset, t: SimSettings) -> list[str]:
    """Stand-in flags that make it hold more or less than its preset declares: awake
    (``sim: {hold_factor: 1.3}`` or ``{hold_mb: N}``, or the host's ``sim_timings.hold_factor``)
    and asleep per level (``sim: {sleep_l1_mb, sleep_l2_mb}``; with ``published: 1`` a vLLM
    preset that declares no ``sleep_vram_mb`` sleeps holding the published figures). Nothing
    when it holds just what it declares."""
    sim = preset.sim
    factor = sim.get("hold_factor", t.hold_factor)
    if sim.get("hold_mb") is not None and preset.vram_mb:
        factor = sim["hold_mb"] / preset.vram_mb
    out = [] if abs(factor - 1.0) < 1e-9 else ["--hold-factor", f"{factor:.6g}"]
    published = sim.get("published", t.published) and preset.driver.value == "vllm" and preset.sleep_vram_mb is None
    per_gpu = PUBLISHED_VLLM_ASLEEP_MB[min(2, max(1, preset.gpus))] * max(1, preset.gpus)
    for level in (1, 2):
        mb = sim.get(f"sleep_l{level}_mb", per_gpu if published else None)
        if mb is not None:
            out += [f"--sleep-l{level}-mb", str(int(mb))]
    return out


def exec_spec(preset: Preset, host: HostSpec, facts: HostFacts, peers: tuple[Preset, ...] = (),
              placement: GpuAssignment | None = None) -> ExecSpec:
    """What the unit of ``preset`` runs; ``peers`` are all presets of a shared router (lead first);
    ``placement``: the GPUs the planner placed it on (None: a box with one GPU); a fraction of
    GPU memory is one of the smallest of them."""
    if placement is not None and placement.totals_mb and min(placement.totals_mb) > 0:
        facts = replace(facts, gpu_total_mb=min(placement.totals_mb))
    return sim_exec(preset, host, facts, peers, placement) if facts.sim else real_exec(preset, host, facts, placement)


# -- systemd quoting ----------------------------------------------------------------------------

_SAFE_WORD = re.compile(r"^[A-Za-z0-9_./:=,@+-]+$")


def systemd_word(arg: str) -> str:
    """Quote one argv word for ExecStart= (systemd splits like a shell, and expands % and $)."""
    no_control(arg, "a command-line word")
    s = arg.replace("%", "%%")
    if _SAFE_WORD.match(arg):
        return s
    s = s.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")
    return f'"{s}"'


def systemd_env(key: str, value: str) -> str:
    """One Environment= assignment, quoted so spaces, quotes, % and $ survive verbatim."""
    no_control(key, "an environment variable name")
    no_control(value, f"environment variable {key}")
    v = value.replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{key}={v}"'


def systemd_command(argv: tuple[str, ...]) -> str:
    return " ".join(systemd_word(a) for a in argv)


def unit_text(value: Any) -> str:
    """Free text in a unit (Description=, a comment): no control characters, % not a specifier."""
    return no_control(str(value), "a unit text value").replace("%", "%%")


def _finalize(value: Any) -> Any:
    # every {{ }} of a unit template passes here: whatever a template prints, a newline never
    # reaches the unit file
    if isinstance(value, str):
        no_control(value, "a value written into a unit")
    return value


def template_dirs(project_root: str) -> list[str]:
    return [str(Path(project_root) / "templates")]


def jinja_env(project_root: str) -> Any:
    """The unit templates' environment, with the systemd quoting filters."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(template_dirs(project_root)), undefined=StrictUndefined,
                      keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False,
                      finalize=_finalize)
    env.filters["systemd_command"] = systemd_command
    env.filters["systemd_env"] = lambda kv: systemd_env(kv[0], kv[1])
    env.filters["unit_text"] = unit_text
    return env


def unit_for(catalog: Catalog, preset: Preset, host: HostSpec, facts: HostFacts, project_root: str,
             placement: GpuAssignment | None = None) -> tuple[str, ExecSpec]:
    """Unit text and ExecSpec of the unit that serves ``preset`` (a shared router's lead renders it)."""
    peers = catalog.unit_peers(preset)
    lead = peers[0]
    spec = exec_spec(lead, host, facts, peers, placement)
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
        env_file=unit_text(spec.env_file) if spec.env_file else "",
        env_summary=f"{len(spec.private_env)} variables, sha256 {env_digest(spec.private_env)}" if spec.private_env else "",
    )


DAEMON_UNIT = "gpumod.service"


def render_daemon_unit(host: HostSpec, facts: HostFacts, project_root: str, *, local: bool) -> str:
    """The router daemon's unit: ``python -m gpumod_tasks.program router.serve`` on the box."""
    rd = host.router_daemon or {}
    python = this_python() if local else str(host.vars.get("gpumod_python", "python3"))
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
