"""What gpumod's HTTP servers (the router daemon, MCP over HTTP) check before serving a request:
the bearer token, the ``Host`` header (DNS rebinding), the ``Origin`` (cross-site requests) and
where a secret comes from.  Pure functions of header bytes and settings; no framework here.

Decisions:
- ``Host`` must name the server: a loopback name, the bound address, or a name given with
  ``--allowed-host``. On a wildcard bind (0.0.0.0, ::) any IP literal is accepted too: a DNS
  rebinding attack needs a name the attacker controls, and an address cannot be rebound.
- ``Origin`` (sent by browsers) must be one of those hosts; ``null`` and foreign sites are refused.
  Requests without an Origin (curl, SDKs, Open WebUI's backend) are not cross-site.
- Tokens are compared as bytes in constant time, so a header that is not ASCII is just wrong.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def is_loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return False


def secret_from(flag: str | None, env: str, what: str) -> str | None:
    """A secret from the flag, else ``$ENV``, else the file ``$ENV_FILE`` names (so a unit file
    never holds it). A value that is only whitespace counts as none. Raises ``ValueError`` with a
    message when the file cannot be read."""
    for v in (flag, os.environ.get(env)):
        if v and v.strip():
            return v.strip()
    path = os.environ.get(f"{env}_FILE")
    if path:
        try:
            with open(path) as fh:
                v = fh.read().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the {what} file {path} (${env}_FILE): {exc.strerror or exc}") from None
        return v or None
    return None


def _host_part(value: str) -> str:
    """``name``, ``name:port``, ``[v6]:port`` -> the bare host, lower-cased."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1:v.index("]")] if "]" in v else v
    if v.count(":") == 1:
        return v.split(":", 1)[0]
    return v  # a bare IPv6 address, or a name


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Guard:
    bind: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()  # extra names the server is reached by (a reverse proxy's, the box's)
    token: str | None = None
    names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        names = {*LOOPBACK_NAMES, *(h.strip().lower().strip("[]") for h in self.allowed_hosts if h.strip())}
        if self.bind not in WILDCARDS:
            names.add(self.bind.lower().strip("[]"))
        object.__setattr__(self, "names", frozenset(names))

    def host_ok(self, host: str) -> bool:
        h = _host_part(host)
        if not h:
            return False
        if h in self.names:
            return True
        return self.bind in WILDCARDS and _is_ip(h)

    def origin_ok(self, origin: str) -> bool:
        try:
            u = urlsplit(origin.strip())
        except ValueError:
            return False
        return u.scheme in ("http", "https") and bool(u.hostname) and self.host_ok(u.netloc.rsplit("@", 1)[-1])

    def authorized(self, header: bytes) -> bool:
        if not self.token:
            return True
        return secrets.compare_digest(header, b"Bearer " + self.token.encode())

    def refusal(self, headers: list[tuple[bytes, bytes]]) -> tuple[int, str] | None:
        """(status, reason) for a request this server must not serve, before anything else is read;
        the bearer token is checked separately (some routes are open)."""
        host = origin = None
        for k, v in headers:
            if k == b"host":
                host = v
            elif k == b"origin":
                origin = v
        if host is None or not self.host_ok(host.decode("latin-1")):
            shown = host.decode("latin-1")[:80] if host is not None else "(none)"
            return 421, f"Host {shown!r} is not a name of this server (add it with --allowed-host)"
        if origin is not None and not self.origin_ok(origin.decode("latin-1")):
            return 403, f"cross-origin request from {origin.decode('latin-1')[:80]!r} refused"
        return None


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    return next((v for k, v in headers if k == name), b"")


def is_json(content_type: bytes) -> bool:
    return content_type.split(b";", 1)[0].strip().lower() == b"application/json"
