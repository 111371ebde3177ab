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

from .catalog.schema import Checker, Field
from .errors import CatalogError, Problem, UnknownName

SSH_TARGET_RE = re.compile(r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class SimSettings:
    """Delays of the simulated GPU host's stand-in servers (seconds)."""

    load_s: float = 1.5
    wake_l1_s: float = 0.3
    wake_l2_s: float = 0.8
    release_lag_s: float = 0.4


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
    gpu_name: str = ""
    gpu_total_mb: int = 0
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


HOST_SCHEMA: dict[str, Field] = {
    "connection": Field("str", choices=("local", "ssh", "nsenter")),
    "nsenter": Field("str"),
    "ssh": Field("str"),
    "identity": Field("str"),
    "scope": Field("str", choices=("system", "user")),
    "state_dir": Field("str"),
    "unit_dir": Field("str"),
    "sim": Field("any"),
    "gpu": Field("map"),
    "gpu_backend": Field("str", choices=("auto", "nvml", "nvidia-smi")),
    "service_manager": Field("str", choices=("auto", "systemd", "supervisor")),
    "reserve_mb": Field("int", minimum=0),
    "preflight": Field("map"),
    "quiesce_s": Field("number", minimum=0),
    "quiesce_threshold_mb": Field("int", minimum=0),
    "release_timeout_s": Field("number", minimum=0.1),
    "release_tolerance_mb": Field("int", minimum=0),
    "keep_warm": Field("str", choices=("sleep", "stop")),
    "procfs": Field("str"),
    "default_mode": Field("id"),
    "warm_modes": Field("id_list"),
    "oom_protect": Field("str_list"),
    "oom_memory_min": Field("str"),
    "oom_score_adj": Field("int", minimum=-1000),
    "min_free_kbytes": Field("int", minimum=0),
    "root_prefix": Field("str"),
    "sim_timings": Field("map"),
    "sim_real": Field("str_list"),
    "router_daemon": Field("any"),
    "fleet": Field("any"),
    "vars": Field("map"),
}


def _host_from(name: str, v: dict[str, Any], ck: Checker, node: Any) -> HostSpec:
    kw: dict[str, Any] = {"name": name}
    conn = v.get("connection", "ssh" if "ssh" in v else "nsenter" if "nsenter" in v else "local")
    kw["connection"] = conn
    if "ssh" in v:
        m = SSH_TARGET_RE.match(v["ssh"])
        if m is None:
            ck.add(node, "ssh", f"hosts.{name}.ssh", f"{v['ssh']!r} is not user@host:port or an ssh_config alias")
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
    simple = ("identity", "scope", "state_dir", "unit_dir", "gpu_backend", "service_manager", "reserve_mb",
              "quiesce_s", "quiesce_threshold_mb", "release_timeout_s", "release_tolerance_mb", "keep_warm",
              "procfs", "default_mode", "warm_modes", "oom_protect", "oom_memory_min", "oom_score_adj",
              "min_free_kbytes", "root_prefix", "vars")
    for key in simple:
        if key in v:
            kw[key] = v[key]
    if "sim" in v:
        if v["sim"] in (True, False):
            kw["sim"] = v["sim"]
        elif v["sim"] != "auto":
            ck.add(node, "sim", f"hosts.{name}.sim", "expected true, false or auto")
    if "gpu" in v:
        g = v["gpu"]
        if not isinstance(g.get("total_mb", 0), int) or isinstance(g.get("total_mb"), bool):
            ck.add(node, "gpu", f"hosts.{name}.gpu.total_mb", "expected an integer")
        else:
            kw["gpu_total_mb"] = int(g.get("total_mb", 0))
        kw["gpu_name"] = str(g.get("name", ""))
        unknown = set(g) - {"name", "total_mb"}
        if unknown:
            ck.add(node, "gpu", f"hosts.{name}.gpu", f"unknown key(s): {', '.join(sorted(unknown))} (known: name, total_mb)")
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
        elif isinstance(rd, dict) and set(rd) <= {"port", "bind", "api_key_file", "reconcile_s"}:
            kw["router_daemon"] = {"port": 8787, "bind": "127.0.0.1", **dict(rd)}
        elif rd not in (False, None):
            ck.add(node, "router_daemon", f"hosts.{name}.router_daemon", "expected true, false or a mapping of port, bind, api_key_file, reconcile_s")
    if "fleet" in v:
        from .fleet.settings import FLEET_KEYS

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
        t = v["sim_timings"]
        known = {f for f in SimSettings.__dataclass_fields__}
        bad = set(t) - known
        if bad:
            ck.add(node, "sim_timings", f"hosts.{name}.sim_timings", f"unknown key(s): {', '.join(sorted(bad))} (known: {', '.join(sorted(known))})")
        kw["sim_settings"] = SimSettings(**{k: float(x) for k, x in t.items() if k in known})
    return HostSpec(**kw)


def load_inventory(path: str | os.PathLike[str] | None) -> Inventory:
    """Load an inventory file; a missing file means just the implicit ``local`` host.

    Read with the fast loader; on any problem again with the round-trip one for positions."""
    if path is None or not Path(path).exists():
        return Inventory(hosts={"local": HostSpec(name="local")}, groups={}, file=str(path or ""))
    try:
        return _load_inventory(path, fast=True)
    except CatalogError:
        return _load_inventory(path, fast=False)


def _load_inventory(path: str | os.PathLike[str], fast: bool) -> Inventory:
    from .catalog.load import _read_yaml

    rel = str(path)
    problems: list[Problem] = []
    doc = _read_yaml(Path(path), rel, problems, fast)
    if problems:
        raise CatalogError(problems)
    ck = Checker(rel)
    top = ck.mapping(doc or {}, {"defaults": Field("map"), "hosts": Field("map"), "groups": Field("map")})
    hosts: dict[str, HostSpec] = {}
    defaults_node = (doc or {}).get("defaults") or {}
    defaults = ck.mapping(defaults_node, HOST_SCHEMA, prefix="defaults.") if "defaults" in top else {}
    for name, node in ((doc or {}).get("hosts") or {}).items():
        if not isinstance(node, dict):
            node = {} if node is None else node
        v = ck.mapping(node, HOST_SCHEMA, prefix=f"hosts.{name}.")
        hosts[str(name)] = _host_from(str(name), {**defaults, **v}, ck, node)
    if "local" not in hosts:
        hosts["local"] = _host_from("local", dict(defaults), ck, defaults_node)
    # a template for ad hoc ssh targets given with -H user@host
    hosts["_ssh_defaults"] = _host_from("_ssh_defaults", {**defaults, "connection": "ssh"}, ck, defaults_node)
    groups: dict[str, tuple[str, ...]] = {}
    gnode = (doc or {}).get("groups") or {}
    for gname, members in gnode.items():
        if not isinstance(members, list):
            ck.add(gnode, gname, f"groups.{gname}", "expected a list of host names")
            continue
        for i, m in enumerate(members):
            if m not in hosts:
                ck.add(members, None, f"groups.{gname}[{i}]", f"unknown host {m!r}", index=i)
        groups[str(gname)] = tuple(str(m) for m in members if m in hosts)
    if ck.problems:
        raise CatalogError(ck.problems)
    return Inventory(hosts=hosts, groups=groups, file=rel)
