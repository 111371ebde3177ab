"""Host memory fact: ``<procfs>/meminfo`` parsed to MB (the procfs path is configurable so tests
and doctor can point at a fake one)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemInfo:
    total_mb: int
    available_mb: int
    free_mb: int = 0
    swap_free_mb: int = 0


def parse_meminfo(text: str) -> MemInfo:
    kb: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if parts and parts[0].isdigit():
            value = int(parts[0])
            if len(parts) > 1 and parts[1].lower() == "mb":
                value *= 1024
            kb[key.strip()] = value
    if "MemTotal" not in kb:
        raise ValueError("meminfo has no MemTotal line")
    avail = kb.get("MemAvailable", kb.get("MemFree", 0) + kb.get("Cached", 0))
    return MemInfo(
        total_mb=kb["MemTotal"] // 1024,
        available_mb=avail // 1024,
        free_mb=kb.get("MemFree", 0) // 1024,
        swap_free_mb=kb.get("SwapFree", 0) // 1024,
    )
