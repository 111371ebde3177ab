"""Read ``presets/<category>/<id>.yaml`` and ``modes/<id>.yaml`` and validate them all at once.

The YAML files are the single source of truth: every command reads them afresh, so editing a
mode takes effect on the next command.  Every problem in every file is reported together, each
with file:line:column and the field; nothing is changed when the catalog is invalid.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..engines.caps import SLEEP_MODES
from ..errors import CatalogError, Problem
from ..yamlfile import ENV_NAME_RE, MB_MAX, NAME_MAX, Checker, Field, kind_of, load_twice, read_yaml, relative, shown
from .model import Catalog, DockerSpec, Driver, Mode, ModeService, Preset, SleepMode

_PORT = Field("int", required=True, check=lambda p: None if 1 <= p <= 65535 else f"port {p} is outside 1-65535")

# Upper bounds: generous for any real model and box, small enough that a typo (a value in bytes,
# an extra three zeros) is caught here rather than by the planner or systemd.
CONTEXT_MAX = 2**24  # tokens (16 M; the largest contexts served today are 10 M)
KV_PER_1K_MAX = 1024 * 1024  # MB of KV cache per 1k tokens
STARTUP_TIMEOUT_MAX = 86_400  # s: one day
SLEEP_ON_IDLE_MAX = 7 * 86_400  # s: one week
SIM_DELAY_MAX = 3600.0  # s
TEMPLATE_RE = re.compile(r"^systemd/[A-Za-z0-9_][A-Za-z0-9._-]*\.j2$")


def _endpoint(value: str) -> str | None:
    return None if value.startswith("/") else f"{value!r} must be a path starting with '/'"


def _env_names(pairs: tuple[tuple[str, str], ...]) -> str | None:
    bad = [k for k, _ in pairs if not ENV_NAME_RE.match(k)]
    return f"invalid environment variable name(s): {', '.join(bad)}" if bad else None


PRESET_SCHEMA: dict[str, Field] = {
    "id": Field("id", required=True),
    "name": Field("str", required=True, max_len=NAME_MAX),
    "driver": Field("str", required=True, choices=tuple(d.value for d in Driver)),
    "description": Field("str"),
    "port": _PORT,
    "vram_mb": Field("int", required=True, minimum=0, maximum=MB_MAX),
    "model_id": Field("str"),
    "model_path": Field("str"),
    "model_size_mb": Field("int", minimum=0, maximum=MB_MAX),
    "context_size": Field("int", minimum=0, maximum=CONTEXT_MAX),
    "kv_cache_per_1k": Field("number", minimum=0, maximum=KV_PER_1K_MAX),
    "health_endpoint": Field("str", check=_endpoint),
    "startup_timeout": Field("int", minimum=1, maximum=STARTUP_TIMEOUT_MAX),
    "supports_sleep": Field("bool"),
    "sleep_mode": Field("str", choices=tuple(s.value for s in SleepMode)),
    "sleep_vram_mb": Field("int", minimum=0, maximum=MB_MAX),
    "depends_on": Field("id_list"),
    "unit_template": Field("str", check=lambda t: None if TEMPLATE_RE.match(t) and ".." not in t else
                           f"{t!r} must name a template in templates/systemd/ (e.g. systemd/vllm.service.j2)"),
    "unit_vars": Field("map"),
    "env": Field("str_map", check=_env_names),
    "compat": Field("str_map"),
    "docker": Field("map"),
    "sim": Field("map"),
    "router": Field("id"),
    "gpus": Field("int", minimum=1, maximum=64),
    "tensor_parallel": Field("int", minimum=1, maximum=64),
    "gpu": Field("any"),
    "tensor_split": Field("any"),
}

GPU_UUID_RE = re.compile(r"^(GPU|MIG)-[0-9A-Za-z][0-9A-Za-z/-]{0,127}$")
GPU_INDEX_MAX = 63

DOCKER_SCHEMA: dict[str, Field] = {
    "image": Field("str", required=True),
    "ports": Field("str_list"),
    "volumes": Field("str_list"),
    "environment": Field("str_map", check=_env_names),
    "command": Field("str_list"),
    "network": Field("str"),
    "extra_args": Field("str_list"),
}

SIM_SCHEMA: dict[str, Field] = {
    "load_s": Field("number", minimum=0, maximum=SIM_DELAY_MAX),
    "wake_l1_s": Field("number", minimum=0, maximum=SIM_DELAY_MAX),
    "wake_l2_s": Field("number", minimum=0, maximum=SIM_DELAY_MAX),
    "release_lag_s": Field("number", minimum=0, maximum=SIM_DELAY_MAX),
    "infer_s": Field("number", minimum=0, maximum=SIM_DELAY_MAX),
    "stream_delay_s": Field("number", minimum=0, maximum=SIM_DELAY_MAX),
    # a stand-in that holds more or less than the preset declares (render.sim_footprint)
    "hold_factor": Field("number", minimum=0, maximum=100),
    "hold_mb": Field("number", minimum=0, maximum=MB_MAX),
    "sleep_l1_mb": Field("number", minimum=0, maximum=MB_MAX),
    "sleep_l2_mb": Field("number", minimum=0, maximum=MB_MAX),
    "published": Field("number", minimum=0, maximum=1),
}

MODE_SCHEMA: dict[str, Field] = {
    "id": Field("id", required=True),
    "name": Field("str", required=True, max_len=NAME_MAX),
    "description": Field("str"),
    "services": Field("any", required=True),
}

MODE_SERVICE_SCHEMA: dict[str, Field] = {
    "id": Field("id", required=True),
    "sleep_on_idle": Field("int", minimum=1, maximum=SLEEP_ON_IDLE_MAX),
}

# Which sleep modes each driver can honour (each engine's row in engines/caps.py).
SLEEP_MODES_BY_DRIVER = {d: {SleepMode(m) for m in SLEEP_MODES[d.value]} for d in Driver}


def load_catalog(root: str | os.PathLike[str]) -> Catalog:
    """Load and validate ``<root>/presets`` and ``<root>/modes``; raise CatalogError listing all problems.

    A valid catalog is read with the fast C loader; when anything is wrong it is read again with
    the round-trip loader so every problem carries its file:line:column.
    """
    return load_twice(lambda fast: _load_catalog(root, fast))


def _load_catalog(root: str | os.PathLike[str], fast: bool) -> Catalog:
    base = Path(root)
    problems: list[Problem] = []
    presets: dict[str, Preset] = {}
    preset_nodes: dict[str, tuple[str, Any]] = {}
    for path in sorted((base / "presets").glob("**/*.y*ml")):
        rel = relative(path, base)
        doc = read_yaml(path, rel, problems, fast)
        if doc is None:
            if not any(p.file == rel for p in problems):
                problems.append(Problem(rel, 1, 1, "", "file is empty"))
            continue
        category = path.parent.name if path.parent != base / "presets" else ""
        preset = _preset(doc, rel, category, problems, base)
        if preset is None:
            continue
        if preset.id in presets:
            other = presets[preset.id].file
            ck = Checker(rel)
            ck.add(doc, "id", "id", f"duplicate preset id {preset.id!r} (also defined in {other})")
            problems.extend(ck.problems)
            continue
        presets[preset.id] = preset
        preset_nodes[preset.id] = (rel, doc)

    modes: dict[str, Mode] = {}
    mode_nodes: dict[str, tuple[str, Any]] = {}
    for path in sorted((base / "modes").glob("*.y*ml")):
        rel = relative(path, base)
        doc = read_yaml(path, rel, problems, fast)
        if doc is None:
            if not any(p.file == rel for p in problems):
                problems.append(Problem(rel, 1, 1, "", "file is empty"))
            continue
        mode = _mode(doc, rel, problems)
        if mode is None:
            continue
        if mode.id in modes:
            ck = Checker(rel)
            ck.add(doc, "id", "id", f"duplicate mode id {mode.id!r} (also defined in {modes[mode.id].file})")
            problems.extend(ck.problems)
            continue
        modes[mode.id] = mode
        mode_nodes[mode.id] = (rel, doc)

    problems.extend(_cross_check(presets, preset_nodes, modes, mode_nodes))
    if problems:
        raise CatalogError(problems)
    return Catalog(presets=presets, modes=modes, root=str(base))


def _preset(doc: Any, rel: str, category: str, problems: list[Problem], base: Path) -> Preset | None:
    ck = Checker(rel)
    v = ck.mapping(doc, PRESET_SCHEMA)
    if "unit_vars" in v:
        # command-line words: a list, never a string (which would be split into characters)
        for key in ("extra_args", "command"):
            ck.arg_list(doc["unit_vars"], key, f"unit_vars.{key}")
    if "unit_template" in v and not (base / "templates" / v["unit_template"]).is_file():
        ck.add(doc, "unit_template", "unit_template", f"{v['unit_template']!r}: no such template in {base / 'templates' / 'systemd'}")
    docker = None
    if "docker" in v:
        d = ck.mapping(doc["docker"], DOCKER_SCHEMA, prefix="docker.")
        if "image" in d:
            docker = DockerSpec(
                image=d["image"],
                ports=d.get("ports", ()),
                volumes=d.get("volumes", ()),
                environment=d.get("environment", ()),
                command=d.get("command", ()),
                network=d.get("network", ""),
                extra_args=d.get("extra_args", ()),
            )
    sim: dict[str, float] = {}
    if "sim" in v:
        sim = ck.mapping(doc["sim"], SIM_SCHEMA, prefix="sim.")
    required = {k for k, f in PRESET_SCHEMA.items() if f.required}
    if ck.problems or not required <= set(v):
        problems.extend(ck.problems)
        return None
    driver = Driver(v["driver"])
    sleep_mode = SleepMode(v.get("sleep_mode", "none"))
    supports = v.get("supports_sleep", sleep_mode is not SleepMode.NONE)
    if supports and sleep_mode is SleepMode.NONE:
        ck.add(doc, "supports_sleep", "supports_sleep", "is true but sleep_mode is 'none' (set sleep_mode: l1, l2 or router)")
    if not supports and sleep_mode is not SleepMode.NONE:
        ck.add(doc, "supports_sleep", "supports_sleep", f"is false but sleep_mode is {sleep_mode.value!r}")
    if sleep_mode not in SLEEP_MODES_BY_DRIVER[driver]:
        allowed = ", ".join(sorted(s.value for s in SLEEP_MODES_BY_DRIVER[driver]))
        ck.add(doc, "sleep_mode", "sleep_mode", f"{sleep_mode.value!r} is not supported by driver {driver.value} (allowed: {allowed})")
    if driver is Driver.DOCKER and docker is None:
        ck.add(doc, None, "docker", "driver docker needs a docker: mapping with an image")
    if driver is not Driver.DOCKER and "docker" in v:
        ck.add(doc, "docker", "docker", f"only valid with driver docker (this preset is {driver.value})")
    if "router" in v and (driver is not Driver.LLAMACPP or sleep_mode is not SleepMode.ROUTER):
        ck.add(doc, "router", "router", "only llama.cpp presets with sleep_mode: router can share a router")
    if v.get("sleep_vram_mb", 0) > v["vram_mb"]:
        ck.add(doc, "sleep_vram_mb", "sleep_vram_mb", f"{v['sleep_vram_mb']} exceeds vram_mb {v['vram_mb']}")
    gpus, pin, split = _gpu_keys(doc, v, driver, ck)
    if ck.problems:
        problems.extend(ck.problems)
        return None
    return Preset(
        id=v["id"],
        name=v["name"],
        driver=driver,
        port=v["port"],
        vram_mb=v["vram_mb"],
        category=category,
        description=v.get("description", ""),
        model_id=v.get("model_id", ""),
        model_path=v.get("model_path", ""),
        model_size_mb=v.get("model_size_mb", 0),
        context_size=v.get("context_size", 0),
        kv_cache_per_1k=v.get("kv_cache_per_1k", 0.0),
        health_endpoint=v.get("health_endpoint", "/health"),
        startup_timeout=v.get("startup_timeout", 300),
        supports_sleep=supports,
        sleep_mode=sleep_mode,
        sleep_vram_mb=v.get("sleep_vram_mb"),
        depends_on=v.get("depends_on", ()),
        unit_template=v.get("unit_template", ""),
        unit_vars=v.get("unit_vars", {}),
        env=v.get("env", ()),
        compat=v.get("compat", ()),
        docker=docker,
        sim=sim,
        router=v.get("router", ""),
        gpus=gpus,
        gpu_pin=pin,
        tensor_split=split,
        file=rel,
    )


def _gpu_pin(doc: Any, raw: Any, ck: Checker) -> tuple[str, ...] | None:
    """``gpu: 1`` / ``gpu: [0, 1]`` / ``gpu: GPU-<uuid>`` -> ("1",) / ("0", "1") / ("GPU-...",)."""
    items = raw if isinstance(raw, list) else [raw]
    node, out = (raw if isinstance(raw, list) else doc), []
    for i, item in enumerate(items):
        name, idx, key = (f"gpu[{i}]", i, None) if isinstance(raw, list) else ("gpu", None, "gpu")
        if isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item <= GPU_INDEX_MAX:
                ck.add(node, key, name, f"GPU index {item} is outside 0-{GPU_INDEX_MAX}", index=idx)
                return None
            out.append(str(item))
        elif isinstance(item, str) and GPU_UUID_RE.match(item):
            out.append(item)
        else:
            ck.add(node, key, name, f"expected a GPU index (0, 1, ...) or a GPU UUID (GPU-...), got {shown(item)}", index=idx)
            return None
    if not out:
        ck.add(doc, "gpu", "gpu", "is an empty list; name the GPUs (gpu: [0, 1]) or leave it out for any GPU")
        return None
    if len(set(out)) != len(out):
        ck.add(doc, "gpu", "gpu", f"names a GPU twice: {', '.join(out)}")
        return None
    return tuple(out)


def _tensor_split(doc: Any, raw: Any, ck: Checker) -> tuple[float, ...] | None:
    if not isinstance(raw, list) or not raw:
        ck.add(doc, "tensor_split", "tensor_split", f"expected a list of ratios (tensor_split: [3, 1]), got {kind_of(raw)}")
        return None
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item) or not 0 <= item <= 1e6:
            ck.add(raw, None, f"tensor_split[{i}]", f"expected a ratio between 0 and 1000000, got {shown(item)}", index=i)
            return None
        out.append(float(item))
    if sum(out) <= 0:
        ck.add(doc, "tensor_split", "tensor_split", "ratios add up to 0; give each GPU its share (tensor_split: [3, 1])")
        return None
    return tuple(out)


def _gpu_keys(doc: Any, v: dict[str, Any], driver: Driver, ck: Checker) -> tuple[int, tuple[str, ...], tuple[float, ...]]:
    """The multi-GPU keys: ``gpus``, vLLM's ``tensor_parallel``, the ``gpu`` pin, llama.cpp's
    ``tensor_split``; absent, a preset runs on one GPU, any. Returns (gpus, pin, split)."""
    gpus: int | None = v.get("gpus")
    if "tensor_parallel" in v:
        if driver is not Driver.VLLM:
            ck.add(doc, "tensor_parallel", "tensor_parallel", f"only valid with driver vllm (this preset is {driver.value}); "
                   "write gpus: N for another engine")
        elif gpus is not None and gpus != v["tensor_parallel"]:
            ck.add(doc, "tensor_parallel", "tensor_parallel", f"{v['tensor_parallel']} differs from gpus: {gpus} "
                   "(a vLLM preset's tensor-parallel size is its GPU count; give one of them)")
        else:
            gpus = v["tensor_parallel"]
    pin: tuple[str, ...] = ()
    if "gpu" in v:
        pin = _gpu_pin(doc, doc["gpu"], ck) or ()
        gpus = _agreed_count(doc, "gpu", len(pin), gpus, ck, lambda n: (
            f"pins {len(pin)} GPU{'s' if len(pin) > 1 else ''} ({', '.join(pin)}) but the preset "
            f"runs on {n}; name {n} GPU{'s' if n > 1 else ''} or drop the count"))
    split: tuple[float, ...] = ()
    if "tensor_split" in v:
        if driver is not Driver.LLAMACPP:
            ck.add(doc, "tensor_split", "tensor_split", f"only valid with driver llamacpp (this preset is {driver.value})")
        else:
            split = _tensor_split(doc, doc["tensor_split"], ck) or ()
            gpus = _agreed_count(doc, "tensor_split", len(split), gpus, ck, lambda n: (
                f"has {len(split)} ratios but the preset runs on {n} GPU{'s' if n > 1 else ''}; give one ratio per GPU"))
    if not pin and "gpu" not in v:
        pin = _pin_from_cuda_visible(v.get("unit_vars", {}), gpus)
        gpus = _agreed_count(doc, "unit_vars", len(pin), gpus, ck, None)
    return (gpus or 1), pin, split


def _agreed_count(doc: Any, key: str, named: int, gpus: int | None, ck: Checker,
                  mismatch: Callable[[int], str] | None) -> int | None:
    """``named`` GPUs given by ``key`` against the preset's GPU count so far: they set the count when
    none was given; a different count is ``mismatch(count)`` (None: the count stands)."""
    if not named:
        return gpus
    if gpus is None:
        return named
    if named != gpus and mismatch is not None:
        ck.add(doc, key, key, mismatch(gpus))
    return gpus


def _pin_from_cuda_visible(unit_vars: dict[str, Any], gpus: int | None) -> tuple[str, ...]:
    """A preset that sets ``unit_vars.cuda_visible_devices`` itself (before pinning existed) keeps
    it verbatim in its unit; the planner reads it as the pin, so it charges the GPUs it names."""
    raw = unit_vars.get("cuda_visible_devices") if isinstance(unit_vars, dict) else None
    if raw is None or isinstance(raw, bool):
        return ()
    items = [x.strip() for x in str(raw).split(",") if x.strip()]
    ok = items and all((x.isdigit() and int(x) <= GPU_INDEX_MAX) or GPU_UUID_RE.match(x) for x in items)
    if not ok or len(set(items)) != len(items) or (gpus is not None and len(items) != gpus):
        return ()
    return tuple(str(int(x)) if x.isdigit() else x for x in items)


def _mode(doc: Any, rel: str, problems: list[Problem]) -> Mode | None:
    ck = Checker(rel)
    v = ck.mapping(doc, MODE_SCHEMA)
    services: list[ModeService] = []
    raw = doc.get("services") if isinstance(doc, dict) else None
    if isinstance(doc, dict) and "services" in doc and raw is None:
        ck.add(doc, "services", "services", at_key=True,
               message="is empty; list the mode's services (write services: [] for a mode that runs nothing)")
    elif raw is not None:
        if not isinstance(raw, list):
            ck.add(doc, "services", "services", "expected a list of service ids (or {id, sleep_on_idle} mappings)")
        else:
            seen: set[str] = set()
            for i, item in enumerate(raw):
                field = f"services[{i}]"
                if isinstance(item, str):
                    if not ck.id(raw, None, field, item, index=i):
                        continue
                    entry = ModeService(id=str(item))
                elif isinstance(item, dict):
                    m = ck.mapping(item, MODE_SERVICE_SCHEMA, prefix=f"{field}.")
                    if "id" not in m:
                        continue
                    entry = ModeService(id=m["id"], sleep_on_idle=m.get("sleep_on_idle"))
                else:
                    ck.add(raw, None, field, "expected a service id or a mapping with id", index=i)
                    continue
                if entry.id in seen:
                    ck.add(raw, None, field, f"service {entry.id!r} is listed twice", index=i)
                    continue
                seen.add(entry.id)
                services.append(entry)
    if ck.problems or "id" not in v or "name" not in v:
        problems.extend(ck.problems)
        return None
    return Mode(id=v["id"], name=v["name"], description=v.get("description", ""), services=tuple(services), file=rel)


def _cross_check(
    presets: dict[str, Preset],
    preset_nodes: dict[str, tuple[str, Any]],
    modes: dict[str, Mode],
    mode_nodes: dict[str, tuple[str, Any]],
) -> list[Problem]:
    problems: list[Problem] = []
    # depends_on must name known presets, and must not form a cycle
    for pid, preset in presets.items():
        rel, doc = preset_nodes[pid]
        ck = Checker(rel)
        for i, dep in enumerate(preset.depends_on):
            if dep not in presets:
                ck.add(doc["depends_on"], None, f"depends_on[{i}]", f"unknown service {dep!r}", index=i)
            elif dep == pid:
                ck.add(doc["depends_on"], None, f"depends_on[{i}]", "a service cannot depend on itself", index=i)
        problems.extend(ck.problems)
    for cycle in find_cycles({p: [d for d in pr.depends_on if d in presets and d != p] for p, pr in presets.items()}):
        first = cycle[0]
        rel, doc = preset_nodes[first]
        ck = Checker(rel)
        ck.add(doc, "depends_on", "depends_on", "dependency cycle: " + " -> ".join([*cycle, first]))
        problems.extend(ck.problems)
    # presets sharing a router are one unit: one port, one set of unit settings
    routers: dict[str, Preset] = {}
    for pid in sorted(presets):
        preset = presets[pid]
        if not preset.router:
            continue
        lead = routers.setdefault(preset.router, preset)
        rel, doc = preset_nodes[pid]
        ck = Checker(rel)
        if preset.port != lead.port:
            ck.add(doc, "port", "port", f"router {preset.router!r} listens on {lead.port} (preset {lead.id!r}); every model of a router shares its port")
        if (preset.gpus, preset.gpu_pin, preset.tensor_split) != (lead.gpus, lead.gpu_pin, lead.tensor_split):
            ck.add(doc, "gpus" if "gpus" in doc else "id", "gpus", f"router {preset.router!r} runs on {lead.gpus} GPU(s)"
                   f"{' ' + ','.join(lead.gpu_pin) if lead.gpu_pin else ''} (preset {lead.id!r}); every model of a router "
                   "is one process: give them the same gpus, gpu and tensor_split")
        if preset.id in {p.router for p in presets.values()}:
            ck.add(doc, "id", "id", f"{preset.id!r} is also the name of a router; use another name")
        problems.extend(ck.problems)
    # modes: known services, no port clash, dependencies present
    for mid, mode in modes.items():
        rel, doc = mode_nodes[mid]
        ck = Checker(rel)
        raw = doc["services"]
        ports: dict[int, str] = {}
        for i, ms in enumerate(mode.services):
            if ms.id not in presets:
                ck.add(raw, None, f"services[{i}]", f"unknown service {ms.id!r}", index=i)
                continue
            port = presets[ms.id].port
            same_router = port in ports and presets[ms.id].router and presets[ports[port]].router == presets[ms.id].router
            if port in ports and not same_router:
                ck.add(raw, None, f"services[{i}]", f"port {port} of {ms.id!r} is already used by {ports[port]!r} in this mode", index=i)
            else:
                ports[port] = ms.id
            for dep in presets[ms.id].depends_on:
                if dep in presets and dep not in mode.service_ids:
                    ck.add(raw, None, f"services[{i}]", f"{ms.id!r} depends on {dep!r}, which this mode does not include", index=i)
        problems.extend(ck.problems)
    return problems


def find_cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Each elementary cycle once (as found by DFS), rotated to start at its smallest node."""
    cycles: list[list[str]] = []
    seen_keys: set[tuple[str, ...]] = set()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cyc = stack[stack.index(nxt):]
                k = cyc.index(min(cyc))
                rot = tuple(cyc[k:] + cyc[:k])
                if rot not in seen_keys:
                    seen_keys.add(rot)
                    cycles.append(list(rot))
            elif state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for n in sorted(graph):
        if state.get(n) is None:
            visit(n)
    return cycles
