"""The sleep-level rule (pure): a level-1 sleep keeps the weights in host RAM, so it becomes level
2 when ``MemAvailable - RAM already promised to L1 sleeps in this plan`` is below
``model_size_mb x preflight_factor + preflight_margin_mb`` (the same rule as the start preflight)."""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog.model import Preset
from .policy import Policy


@dataclass(frozen=True)
class SleepChoice:
    level: int
    note: str = ""
    ram_promised_mb: int = 0  # host RAM this sleep will hold (L1: the weights)


def choose_sleep_level(p: Preset, level: int, mem_left_mb: int | None, policy: Policy) -> SleepChoice:
    """``level`` is the level asked for (the preset's, or the operator's)."""
    if level != 1 or mem_left_mb is None:
        return SleepChoice(level)
    need = policy.ram_needed_mb(p)
    if mem_left_mb < need:
        note = (f"L1 -> L2: L1 keeps {p.model_size_mb} MB of weights in host RAM; MemAvailable left "
                f"{mem_left_mb} MB < {p.model_size_mb} x {policy.preflight_factor:g} + {policy.preflight_margin_mb} = {need} MB")
        return SleepChoice(2, note)
    return SleepChoice(1, "", p.model_size_mb)
