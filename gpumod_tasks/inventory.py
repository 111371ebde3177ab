"""Inventory: the boxes gpumod drives (``inventory/hosts.yaml``), and ``-H`` resolution.

``-H`` accepts inventory host names, group names and plain SSH targets (``user@host:port`` or an
``~/.ssh/config`` alias that is not in the inventory).  With no ``-H`` the target is ``local``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import CatalogError, Problem, UnknownName
from .yamlfile import MB_MAX, NAME_MAX, Checker, Field, kind_of, load_twice, read_yaml, shown

SSH_TARGET_RE = re.compile(r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class SimSettings:
    """Delays of the simulated GPU host's stand-in servers (seconds)."""

    load_s: float = 1.5
    wake_l1_s: float = 0.3
    wake_l2_s: float = 0.8
    release_lag_s: float = 0.4


@dataclass(frozen=True)
class GpuDecl:
    """One GPU as the inventory declares it (the profile of a simulated GPU); 0 / "" = the default."""

    name: str = ""
    total_mb: int = 0


#: most GPUs one host may declare
GPUS_MAX = 64


@dataclass(frozen=True)
class HostSpec:
    name: str
    connection: str = "local"  # local | ssh | nsenter
    nsenter: str = ""  # nsenter: PID (or a file holding it) of the namespace's init, e.g. a container's systemd
    ssh_host: str = ""
    ssh_user: str = ""
    ssh_port: int | None = None
    identity: str = ""
    scope: str = "system"  # system | user
    state_dir: str = ""
    unit_dir: str = ""
    sim: bool | None = None  # None = auto (simulated when no NVIDIA driver answers)
    # the declared GPUs (``gpu:`` one, ``gpus:`` several), in index order; () = none declared.
    # gpu_name / gpu_total_mb are GPU 0's, for callers that know one GPU.
    gpus: tuple[GpuDecl, ...] = ()
    gpu_name: str = ""
    gpu_total_mb: int = 0
    # this host's own catalog (presets/ and modes/), relative to the project root; "" = the project's
    catalog: str = ""
    gpu_backend: str = "auto"  # auto | nvml | nvidia-smi
    service_manager: str = "auto"  # auto | systemd | supervisor
    reserve_mb: int = 512
    preflight_factor: float = 1.1
    preflight_margin_mb: int = 1024
    quiesce_s: float = 0.0
    quiesce_threshold_mb: int = 8000
    release_timeout_s: float = 60.0
    release_tolerance_mb: int = 256
    keep_warm: str = "sleep"  # sleep | stop: what happens to sleep-capable services leaving the mode
    procfs: str = "/proc"
    default_mode: str = ""
    warm_modes: tuple[str, ...] = ()
    oom_protect: tuple[str, ...] = ("sshd.service", "code-server.service")
    oom_memory_min: str = "512M"
    oom_score_adj: int = -900
    min_free_kbytes: int = 1048576
    # install protections under another root (tests, images): nothing live is touched then.
    # "" = auto: "/" on a real GPU host, <state_dir>/sim/root on a simulated one
    root_prefix: str = ""
    sim_settings: SimSettings = field(default_factory=SimSettings)
    # the router daemon as a unit on this host (template.install-all): port and bind, or None for off
    router_daemon: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    # LiteLLM's proxy in front of several boxes' router daemons, run on this host (gpumod_tasks/fleet)
    fleet: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    # on a simulated host, drivers whose real server runs anyway (CPU llama.cpp), metered on the ledger
    sim_real: tuple[str, ...] = ()
    vars: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def declared_gpus(self) -> tuple[GpuDecl, ...]:
        """The GPUs declared, with a HostSpec built by hand (gpu_name / gpu_total_mb only) as one."""
        if self.gpus:
            return self.gpus
        if self.gpu_name or self.gpu_total_mb:
            return (GpuDecl(self.gpu_name, self.gpu_total_mb),)
        return ()

    @property
    def is_local(self) -> bool:
        """Commands run on this machine (plain local, or inside a local namespace via nsenter)."""
        return self.connection in ("local", "nsenter")

    def resolved_state_dir(self, home: str = "~") -> str:
        if self.state_dir:
            return self.state_dir
        if self.scope == "user" or (self.is_local and os.geteuid() != 0):
            return f"{home}/.local/state/gpumod"
        return "/var/lib/gpumod"

    def resolved_unit_dir(self, home: str = "~") -> str:
        if self.unit_dir:
            return self.unit_dir
        return f"{home}/.config/systemd/user" if self.scope == "user" else "/etc/systemd/system"

    @property
    def label(self) -> str:
        if self.is_local:
            return self.name
        port = f":{self.ssh_port}" if self.ssh_port else ""
        user = f"{self.ssh_user}@" if self.ssh_user else ""
        target = f"{user}{self.ssh_host}{port}"
        return target if self.name in (self.ssh_host, target) else f"{self.name} ({target})"


@dataclass(frozen=True)
class Inventory:
    hosts: dict[str, HostSpec]
    groups: dict[str, tuple[str, ...]]
    file: str = ""

    def resolve(self, spec: str | None) -> list[HostSpec]:
        """Turn a ``-H`` value into host specs (order kept, duplicates dropped)."""
        if not spec:
            return [self.hosts.get("local") or HostSpec(name="local")]
        out: list[HostSpec] = []
        for token in (t.strip() for t in spec.split(",")):
            if not token:
                continue
            for h in self._resolve_one(token):
                if h.name not in {o.name for o in out}:
                    out.append(h)
        return out

    def _resolve_one(self, token: str) -> list[HostSpec]:
        if token in self.hosts:
            return [self.hosts[token]]
        if token in self.groups:
            return [self.hosts[h] for h in self.groups[token]]
        m = SSH_TARGET_RE.match(token)
        if m is None:
            raise UnknownName("host", token, [*self.hosts, *self.groups])
        base = self.hosts.get("_ssh_defaults") or HostSpec(name=token)
        return [
            replace(
                base,
                name=token,
                connection="ssh",
                ssh_host=m.group("host").strip("[]"),
                ssh_user=m.group("user") or "",
                ssh_port=int(m.group("port")) if m.group("port") else None,
            )
        ]


def _port(p: int) -> str | None:
    return None if 1 <= p <= 65535 else f"port {p} is outside 1-65535"


def _sim_flag(v: Any) -> str | None:
    return None if v is True or v is False or v == "auto" else "expected true, false or auto"


def _router_daemon(v: Any) -> str | None:
    ok = v is True or v is False or v is None or isinstance(v, dict)
    return None if ok else "expected true, false or a mapping of port, bind, api_key_file, reconcile_s"


def _nonblank(v: str) -> str | None:
    return None if v.strip() else "is empty"


GPU_SCHEMA: dict[str, Field] = {
    "name": Field("str", max_len=NAME_MAX),
    "total_mb": Field("int", minimum=0, maximum=MB_MAX),
}
GPUS_COUNT_SCHEMA: dict[str, Field] = {
    "count": Field("int", required=True, minimum=1, maximum=GPUS_MAX),
    **GPU_SCHEMA,
}
PREFLIGHT_SCHEMA: dict[str, Field] = {
    "factor": Field("number", minimum=0, maximum=100),
    "margin_mb": Field("int", minimum=0, maximum=MB_MAX),
}
SIM_TIMINGS_SCHEMA: dict[str, Field] = {k: Field("number", minimum=0, maximum=3600) for k in SimSettings.__dataclass_fields__}
ROUTER_DAEMON_SCHEMA: dict[str, Field] = {
    "port": Field("int", check=_port),
    "bind": Field("str", check=_nonblank),
    "api_key_file": Field("str", check=_nonblank),
    "reconcile_s": Field("number", minimum=0.1, maximum=3600),
}

HOST_SCHEMA: dict[str, Field] = {
    "connection": Field("str", choices=("local", "ssh", "nsenter")),
    "nsenter": Field("str", check=_nonblank),
    "ssh": Field("str"),
    "identity": Field("str"),
    "scope": Field("str", choices=("system", "user")),
    "state_dir": Field("str"),
    "unit_dir": Field("str"),
    "sim": Field("any", check=_sim_flag),
    "gpu": Field("map", schema=GPU_SCHEMA),
    "gpus": Field("any", schema=GPUS_COUNT_SCHEMA),  # a list of {name, total_mb}, or {count, name, total_mb}
    "catalog": Field("str", check=_nonblank),
    "gpu_backend": Field("str", choices=("auto", "nvml", "nvidia-smi")),
    "service_manager": Field("str", choices=("auto", "systemd", "supervisor")),
    "reserve_mb": Field("int", minimum=0, maximum=MB_MAX),
    "preflight": Field("map", schema=PREFLIGHT_SCHEMA),
    "quiesce_s": Field("number", minimum=0, maximum=3600),
    "quiesce_threshold_mb": Field("int", minimum=0, maximum=MB_MAX),
    "release_timeout_s": Field("number", minimum=0.1, maximum=3600),
    "release_tolerance_mb": Field("int", minimum=0, maximum=MB_MAX),
    "keep_warm": Field("str", choices=("sleep", "stop")),
    "procfs": Field("str"),
    "default_mode": Field("id"),
    "warm_modes": Field("id_list"),
    "oom_protect": Field("str_list", max_len=255),
    "oom_memory_min": Field("str"),
    "oom_score_adj": Field("int", minimum=-1000, maximum=1000),
    "min_free_kbytes": Field("int", minimum=0, maximum=64 * 1024 * 1024),
    "root_prefix": Field("str"),
    "sim_timings": Field("map", schema=SIM_TIMINGS_SCHEMA),
    "sim_real": Field("str_list"),
    "router_daemon": Field("any", check=_router_daemon, schema=ROUTER_DAEMON_SCHEMA),
    "fleet": Field("any"),
    "vars": Field("map"),
}
#: the keys of a host's ``fleet:`` mapping (gpumod_tasks/fleet/settings.py reads them)
FLEET_KEYS = ("port", "bind", "master_key_file", "boxes", "api_key_files", "urls", "python", "config",
              "sync_interval_s", "num_retries", "allowed_fails", "cooldown_time_s", "timeout_s")
#: host and group names: what -H takes (comma-separated) and an ssh_config alias can be
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
HOST_NAME_MAX = 253


def _host_from(name: str, v: dict[str, Any], ck: Checker, node: Any) -> HostSpec:
    """A HostSpec from values the schema already checked (``v``: defaults merged with the host's)."""
    kw: dict[str, Any] = {"name": name}
    conn = v.get("connection", "ssh" if "ssh" in v else "nsenter" if "nsenter" in v else "local")
    kw["connection"] = conn
    if "ssh" in v:
        m = SSH_TARGET_RE.match(v["ssh"])
        if m is None:
            ck.add(node, "ssh", f"hosts.{name}.ssh", f"{v['ssh']!r} is not user@host:port or an ssh_config alias")
        elif m.group("port") and _port(int(m.group("port"))):
            ck.add(node, "ssh", f"hosts.{name}.ssh", str(_port(int(m.group("port")))))
        else:
            kw.update(ssh_host=m.group("host").strip("[]"), ssh_user=m.group("user") or "")
            if m.group("port"):
                kw["ssh_port"] = int(m.group("port"))
    elif conn == "ssh":
        kw["ssh_host"] = name
    if conn == "nsenter":
        if not v.get("nsenter"):
            ck.add(node, "connection", f"hosts.{name}.nsenter", "connection nsenter needs nsenter: PID or a pid file")
        else:
            kw["nsenter"] = str(v["nsenter"])
    simple = ("identity", "scope", "state_dir", "catalog", "unit_dir", "gpu_backend", "service_manager", "reserve_mb",
              "quiesce_s", "quiesce_threshold_mb", "release_timeout_s", "release_tolerance_mb", "keep_warm",
              "procfs", "default_mode", "warm_modes", "oom_protect", "oom_memory_min", "oom_score_adj",
              "min_free_kbytes", "root_prefix", "vars")
    for key in simple:
        if key in v:
            kw[key] = v[key]
    if v.get("sim") in (True, False):
        kw["sim"] = v["sim"]
    if "gpu" in v:
        kw["gpus"] = (GpuDecl(str(v["gpu"].get("name", "")), int(v["gpu"].get("total_mb", 0))),)
    if "gpus" in v:
        kw["gpus"] = v["gpus"]
    if kw.get("gpus"):
        kw["gpu_name"], kw["gpu_total_mb"] = kw["gpus"][0].name, kw["gpus"][0].total_mb
    if "preflight" in v:
        p = v["preflight"]
        if "factor" in p:
            kw["preflight_factor"] = float(p["factor"])
        if "margin_mb" in p:
            kw["preflight_margin_mb"] = int(p["margin_mb"])
    if "router_daemon" in v:
        rd = v["router_daemon"]
        if rd is True:
            kw["router_daemon"] = {"port": 8787, "bind": "127.0.0.1"}
        elif isinstance(rd, dict):
            kw["router_daemon"] = {"port": 8787, "bind": "127.0.0.1", **dict(rd)}
    if "fleet" in v:
        fl = v["fleet"]
        if fl is True:
            kw["fleet"] = {}
        elif isinstance(fl, dict) and set(fl) <= set(FLEET_KEYS):
            kw["fleet"] = dict(fl)
        elif fl not in (False, None):
            ck.add(node, "fleet", f"hosts.{name}.fleet", f"expected true, false or a mapping of {', '.join(FLEET_KEYS)}")
    if "sim_real" in v:
        bad = [d for d in v["sim_real"] if d != "llamacpp"]
        if bad:
            ck.add(node, "sim_real", f"hosts.{name}.sim_real", f"{', '.join(bad)}: only llamacpp runs for real on a simulated host (it needs no GPU)")
        kw["sim_real"] = tuple(v["sim_real"])
    if "sim_timings" in v:
        kw["sim_settings"] = SimSettings(**{k: float(x) for k, x in v["sim_timings"].items()})
    return HostSpec(**kw)


def load_inventory(path: str | os.PathLike[str] | None) -> Inventory:
    """Load an inventory file; a missing file means just the implicit ``local`` host.

    Read with the fast loader; on any problem again with the round-trip one for positions."""
    if path is None or not Path(path).exists():
        return Inventory(hosts={"local": HostSpec(name="local")}, groups={}, file=str(path or ""))
    return load_twice(lambda fast: _load_inventory(path, fast))


def _host_settings(ck: Checker, node: Any, prefix: str) -> dict[str, Any]:
    v = ck.mapping(node, HOST_SCHEMA, prefix=prefix)
    if isinstance(node, dict) and "gpus" in node:
        if "gpu" in node:
            ck.add(node, "gpus", f"{prefix}gpus", "declare either gpu (one GPU) or gpus (several), not both", at_key=True)
            v.pop("gpu", None)
            v.pop("gpus", None)
        elif "gpus" in v:
            gpus = _gpus(ck, node["gpus"], v["gpus"], node, f"{prefix}gpus")
            if gpus is None:
                v.pop("gpus")
            else:
                v["gpus"] = gpus
    if "vars" in v:
        # host-wide command-line words: a list, never a string split into characters
        for key in ("extra_args", "command"):
            ck.arg_list(node["vars"], key, f"{prefix}vars.{key}")
    return v


def _gpus(ck: Checker, raw: Any, checked: Any, node: Any, name: str) -> tuple[GpuDecl, ...] | None:
    """``gpus:`` as GPU declarations: a list of ``{name, total_mb}`` (one per GPU, in index order),
    or ``{count, name, total_mb}`` (that many alike); None (problems added) when it is neither."""
    if isinstance(raw, dict):  # already checked against GPUS_COUNT_SCHEMA
        return (GpuDecl(str(checked.get("name", "")), int(checked.get("total_mb", 0))),) * int(checked["count"])
    if not isinstance(raw, list):
        ck.add(node, "gpus", name, f"expected a list of {{name, total_mb}} or a mapping of count, name, total_mb, got {kind_of(raw)}")
        return None
    if not raw or len(raw) > GPUS_MAX:
        ck.add(node, "gpus", name, f"expected 1 to {GPUS_MAX} GPUs, got {len(raw)}")
        return None
    before = len(ck.problems)
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            ck.add(raw, None, f"{name}[{i}]", f"expected a mapping of name, total_mb, got {kind_of(item)}", index=i)
            continue
        g = ck.mapping(item, GPU_SCHEMA, prefix=f"{name}[{i}].")
        out.append(GpuDecl(str(g.get("name", "")), int(g.get("total_mb", 0))))
    return tuple(out) if len(ck.problems) == before else None


def _name_ok(ck: Checker, parent: Any, key: Any, field: str, what: str) -> bool:
    if not isinstance(key, str):
        ck.add(parent, key, field, f"a {what} name must be a string, got {key!r}", at_key=True)
        return False
    if not HOST_NAME_RE.match(key) or len(key) > HOST_NAME_MAX:
        ck.add(parent, key, field, f"not a valid {what} name (letters, digits, '.', '_', '-'; at most {HOST_NAME_MAX})",
               at_key=True)
        return False
    return True


def _load_inventory(path: str | os.PathLike[str], fast: bool) -> Inventory:
    rel = str(path)
    problems: list[Problem] = []
    doc = read_yaml(Path(path), rel, problems, fast)
    if problems:
        raise CatalogError(problems)
    if doc is None:  # an empty file: just the implicit local host
        doc = {}
    ck = Checker(rel)
    if not isinstance(doc, dict):
        ck.add(doc, None, "(document)", f"expected a mapping of defaults, hosts and groups, got {kind_of(doc)}")
        raise CatalogError(ck.problems)
    for key, value in doc.items():
        if key not in ("defaults", "hosts", "groups"):
            ck.add(doc, key, shown(key), "unknown key (known keys: defaults, groups, hosts)", at_key=True)
        elif value is not None and not isinstance(value, dict):
            ck.add(doc, key, key, f"expected a mapping, got {kind_of(value)}")
    if ck.problems:
        raise CatalogError(ck.problems)
    hosts: dict[str, HostSpec] = {}
    defaults_node = doc.get("defaults") or {}
    defaults = _host_settings(ck, defaults_node, "defaults.") if "defaults" in doc else {}
    hosts_node = doc.get("hosts") or {}
    for name, node in hosts_node.items():
        if not _name_ok(ck, hosts_node, name, f"hosts.{shown(name)}", "host"):
            continue
        if node is None:
            node = {}
        elif not isinstance(node, dict):
            ck.add(hosts_node, name, f"hosts.{name}", f"expected a mapping of settings, got {kind_of(node)}")
            continue
        v = _host_settings(ck, node, f"hosts.{name}.")
        inherited = {k: x for k, x in defaults.items() if not (k in ("gpu", "gpus") and ("gpu" in v or "gpus" in v))}
        hosts[name] = _host_from(name, {**inherited, **v}, ck, node)
    if "local" not in hosts:
        hosts["local"] = _host_from("local", dict(defaults), ck, defaults_node)
    # a template for ad hoc ssh targets given with -H user@host
    hosts["_ssh_defaults"] = _host_from("_ssh_defaults", {**defaults, "connection": "ssh"}, ck, defaults_node)
    groups: dict[str, tuple[str, ...]] = {}
    gnode = doc.get("groups") or {}
    for gname, members in gnode.items():
        if not _name_ok(ck, gnode, gname, f"groups.{shown(gname)}", "group"):
            continue
        if not isinstance(members, list):
            ck.add(gnode, gname, f"groups.{gname}", "expected a list of host names")
            continue
        for i, m in enumerate(members):
            if not isinstance(m, str) or m not in hosts:
                ck.add(members, None, f"groups.{gname}[{i}]", f"unknown host {shown(m)!r}", index=i)
        groups[gname] = tuple(m for m in members if isinstance(m, str) and m in hosts)
    if ck.problems:
        raise CatalogError(ck.problems)
    return Inventory(hosts=hosts, groups=groups, file=rel)
