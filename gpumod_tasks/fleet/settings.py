"""The ``fleet:`` inventory key: where the proxy listens and which boxes stand behind it."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GpumodError, UnknownName
from ..inventory import HostSpec, Inventory

LOOPBACK = ("127.0.0.1", "localhost", "::1")
EXTRA_HINT = "pip install 'gpumod[fleet]'"


class FleetError(GpumodError):
    """The fleet's settings or its proxy are not usable (the message says what to do)."""

    exit_code = 2


@dataclass(frozen=True)
class Box:
    """One box behind the proxy: its router daemon's URL and where the controller reads its key."""

    name: str
    url: str  # http://ADDR:PORT of the router daemon (the OpenAI routes are under /v1)
    key_file: str  # "" when the daemon takes no key
    gpu_mb: int
    reserve_mb: int

    @property
    def key_env(self) -> str:
        """The variable the proxy's process gets the key in (LiteLLM's ``os.environ/VAR``)."""
        return "GPUMOD_FLEET_KEY_" + re.sub(r"[^A-Za-z0-9]", "_", self.name).upper()


@dataclass(frozen=True)
class FleetSettings:
    host: str  # the inventory host the proxy runs on
    port: int
    bind: str
    master_key_file: str
    boxes: tuple[Box, ...]
    skipped: tuple[str, ...]  # boxes left out, each with the reason
    python: str  # the interpreter that has litellm[proxy]
    config: str  # where the generated config is written
    sync_interval_s: float
    num_retries: int
    allowed_fails: int
    cooldown_time_s: float
    timeout_s: float

    @property
    def url(self) -> str:
        addr = "127.0.0.1" if self.bind in ("0.0.0.0", "::") else self.bind
        return f"http://{addr}:{self.port}"


def fleet_host(inv: Inventory, name: str | None) -> HostSpec:
    """The host whose ``fleet:`` applies: the one named, else the only one that has it."""
    if name:
        if name not in inv.hosts:
            raise UnknownName("host", name, [h for h in inv.hosts if not h.startswith("_")])
        if inv.hosts[name].fleet is None:
            raise FleetError(f"host {name} has no fleet: setting in {inv.file}")
        return inv.hosts[name]
    have = [h for n, h in inv.hosts.items() if h.fleet is not None and not n.startswith("_")]
    if not have:
        raise FleetError(f"no host has a fleet: setting in {inv.file or 'the inventory'} "
                         "(add `fleet: {port: 4000, master_key_file: ...}` to the controller's host or a box)")
    if len(have) > 1:
        raise FleetError(f"several hosts have fleet: ({', '.join(h.name for h in have)}): name one with --as-host")
    return have[0]


def _daemon_url(fleet: HostSpec, box: HostSpec, rd: dict[str, Any]) -> str | None:
    bind, port = str(rd.get("bind", "127.0.0.1")), int(rd.get("port", 8787))
    if box.name == fleet.name or (box.is_local and fleet.is_local):
        addr = "127.0.0.1" if bind in (*LOOPBACK, "0.0.0.0", "::") else bind
    elif bind in LOOPBACK:
        return None
    elif bind in ("0.0.0.0", "::"):
        addr = box.ssh_host or box.name
    else:
        addr = bind
    if ":" in addr and not addr.startswith("["):
        addr = f"[{addr}]"
    return f"http://{addr}:{port}"


def fleet_settings(inv: Inventory, name: str | None = None, *, state_dir: str | None = None) -> FleetSettings:
    """Resolve the fleet's settings (pure apart from reading the inventory already loaded)."""
    h = fleet_host(inv, name)
    fl = dict(h.fleet or {})
    names = fl.get("boxes") or [n for n, b in inv.hosts.items() if b.router_daemon and not n.startswith("_")]
    key_files = dict(fl.get("api_key_files") or {})
    urls = dict(fl.get("urls") or {})
    boxes, skipped = [], []
    for n in names:
        if n not in inv.hosts:
            raise FleetError(f"fleet.boxes on {h.name}: unknown host {n!r} (known: {', '.join(sorted(k for k in inv.hosts if not k.startswith('_')))})")
        b = inv.hosts[n]
        if not b.router_daemon and n not in urls:
            skipped.append(f"{n}: no router_daemon: setting (the fleet reaches a box through its router daemon)")
            continue
        rd = b.router_daemon or {}
        url = urls.get(n) or _daemon_url(h, b, rd)
        if url is None:
            skipped.append(f"{n}: its router daemon binds {rd.get('bind')} only (set router_daemon.bind to an address "
                           "the fleet host reaches, with an api_key_file)")
            continue
        boxes.append(Box(name=n, url=str(url).rstrip("/").removesuffix("/v1"), key_file=str(key_files.get(n) or rd.get("api_key_file") or ""),
                         gpu_mb=b.gpu_total_mb, reserve_mb=b.reserve_mb))
    base = state_dir or h.state_dir or (h.is_local and os.environ.get("GPUMOD_STATE_DIR")) or h.resolved_state_dir(str(Path.home()))
    return FleetSettings(
        host=h.name, port=int(fl.get("port", 4000)), bind=str(fl.get("bind", "127.0.0.1")),
        master_key_file=str(fl.get("master_key_file", "")), boxes=tuple(boxes), skipped=tuple(skipped),
        python=str(fl.get("python") or os.environ.get("GPUMOD_FLEET_PYTHON") or sys.executable),
        config=str(fl.get("config") or Path(base) / "fleet" / "litellm.yaml"),
        sync_interval_s=float(fl.get("sync_interval_s", 1.0)), num_retries=int(fl.get("num_retries", 3)),
        allowed_fails=int(fl.get("allowed_fails", 1)), cooldown_time_s=float(fl.get("cooldown_time_s", 10)),
        timeout_s=float(fl.get("timeout_s", 600)))


def read_secret(path: str, what: str) -> str:
    try:
        with open(os.path.expanduser(path)) as fh:
            value = fh.read().strip()
    except OSError as exc:
        raise FleetError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if not value:
        raise FleetError(f"the {what} file {path} is empty")
    return value
