"""The router daemon's registration on its box: ``<state_dir>/router.json`` (mode 0600).

A running daemon writes it once it serves and removes it at exit: its pid, its port, the address
to reach it by on the box, and its API key (or the key file's path), so a CLI run on the same
target can ask it to drain the requests it serves before a service leaves (``POST /drain``). A
file whose pid is gone (a daemon killed with SIGKILL) is stale: a run on this machine checks the
pid; any run treats a refused connection as no daemon.

Pure: no host code (``observed.py`` carries the parsed value).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TypeGuard

FILE = "router.json"
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def registration_file(state_dir: str) -> str:
    return f"{state_dir.rstrip('/')}/{FILE}"


@dataclass(frozen=True)
class DaemonLink:
    """How to reach the router daemon registered on a target's box."""

    pid: int
    port: int
    address: str = "127.0.0.1"  # as seen on the box
    api_key: str = field(default="", repr=False)
    api_key_file: str = ""

    def url(self, base_url: str) -> str:
        """``base_url``: the host's URL prefix for 127.0.0.1:port (direct-tcpip over SSH)."""
        if self.address in ("127.0.0.1", "localhost"):
            return base_url
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"


def render(pid: int, port: int, bind: str, *, api_key: str = "", api_key_file: str = "") -> str:
    address = WILDCARDS.get(bind, bind)
    data: dict[str, object] = {"pid": pid, "port": port, "address": address}
    if api_key_file:
        data["api_key_file"] = api_key_file
    elif api_key:
        data["api_key"] = api_key
    return json.dumps(data) + "\n"


def parse(text: str | None) -> DaemonLink | None:
    """The registration, or None (no file, or a file of the wrong shape: no daemon to drain through)."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    pid, port = data.get("pid"), data.get("port")
    if not (_whole(pid) and pid > 0 and _whole(port) and 0 < port < 65536):
        return None
    strs = {k: data.get(k, "") for k in ("address", "api_key", "api_key_file")}
    if not all(isinstance(v, str) for v in strs.values()):
        return None
    return DaemonLink(pid=pid, port=port, address=strs["address"] or "127.0.0.1", api_key=strs["api_key"],
                      api_key_file=strs["api_key_file"])


def _whole(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)
