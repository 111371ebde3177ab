"""Which addresses a port is listening on, from ``/proc/net/tcp`` and ``tcp6`` (parser is pure)."""

from __future__ import annotations

import ipaddress

LISTEN = "0A"


def _addr(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # tcp6: four 32-bit words, each in host (little-endian) order
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    a = ipaddress.IPv6Address(words)
    return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)


def listening(text: str, port: int) -> set[str]:
    """Local addresses in LISTEN state on ``port`` in a ``/proc/net/tcp[6]`` dump."""
    out = set()
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 4 or cols[3] != LISTEN or ":" not in cols[1]:
            continue
        addr, _, hport = cols[1].rpartition(":")
        try:
            if int(hport, 16) == port:
                out.add(_addr(addr))
        except ValueError:
            continue
    return out


def bound_as_intended(have: set[str], bind: str) -> bool:
    want = {"localhost": "127.0.0.1"}.get(bind, bind)
    return bool(have) and have <= {want}
