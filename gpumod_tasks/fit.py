"""VRAM fit arithmetic and the alternatives offered when a set of services does not fit (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .catalog.model import Catalog, Preset

TOKENS_PER_K = 1024


@dataclass(frozen=True)
class Alternative:
    kind: str  # time-share | reduce-context | swap
    description: str
    total_mb: int  # peak (time-share) or new total
    fits: bool


@dataclass(frozen=True)
class FitResult:
    services: tuple[Preset, ...]
    total_mb: int
    gpu_mb: int
    reserve_mb: int
    alternatives: tuple[Alternative, ...] = ()

    @property
    def budget_mb(self) -> int:
        return self.gpu_mb - self.reserve_mb

    @property
    def fits(self) -> bool:
        return self.total_mb <= self.budget_mb

    @property
    def headroom_mb(self) -> int:
        return self.gpu_mb - self.total_mb

    @property
    def over_by_mb(self) -> int:
        return max(0, self.total_mb - self.budget_mb)

    def as_dict(self) -> dict[str, Any]:
        return {"total_mb": self.total_mb, "gpu_mb": self.gpu_mb, "reserve_mb": self.reserve_mb, "fits": self.fits,
                "headroom_mb": self.headroom_mb, "over_by_mb": self.over_by_mb,
                "alternatives": [{"kind": a.kind, "description": a.description, "total_mb": a.total_mb, "fits": a.fits}
                                 for a in self.alternatives]}

    def headline(self) -> str:
        reserve = f", reserve {self.reserve_mb} MB" if self.reserve_mb else ""
        if self.fits:
            return f"Fits: {self.total_mb} / {self.gpu_mb} MB (headroom: {self.headroom_mb} MB{reserve})"
        return f"Does not fit: {self.total_mb} / {self.gpu_mb} MB (over by {self.over_by_mb} MB{reserve})"


def kv_mb(p: Preset, context: int | None = None) -> float:
    ctx = p.context_size if context is None else context
    return p.kv_cache_per_1k * ctx / TOKENS_PER_K


def time_share_peak(services: list[Preset]) -> int | None:
    """Peak VRAM when sleep-capable services take turns (one awake, the rest asleep holding their
    residual), as a wake-one-at-a-time pipeline would; None when fewer than two can sleep."""
    sleepers = [p for p in services if p.can_sleep]
    if len(sleepers) < 2:
        return None
    fixed = sum(p.vram_mb for p in services if not p.can_sleep)
    residual = sum(p.residual_mb for p in sleepers)
    return fixed + residual + max(p.vram_mb - p.residual_mb for p in sleepers)


def alternatives(catalog: Catalog, services: list[Preset], gpu_mb: int, reserve_mb: int) -> list[Alternative]:
    total = sum(p.vram_mb for p in services)
    budget = gpu_mb - reserve_mb
    out: list[Alternative] = []
    peak = time_share_peak(services)
    if peak is not None:
        names = ", ".join(p.id for p in services if p.can_sleep)
        out.append(Alternative("time-share", f"time-share {names} (one awake at a time, the others asleep): peak {peak} MB",
                               peak, peak <= budget))
    for p in services:
        if p.kv_cache_per_1k <= 0 or p.context_size <= 0:
            continue
        full = kv_mb(p)
        half_saves = int(full / 2)
        ctx, k = p.context_size, 0
        while ctx > 2048 and total - int(full - kv_mb(p, ctx)) > budget:
            ctx //= 2
            k += 1
        saved = int(full - kv_mb(p, ctx))
        if k == 0:
            ctx, saved, k = p.context_size // 2, half_saves, 1
        new_total = total - saved
        out.append(Alternative(
            "reduce-context",
            f"reduce context of {p.id} {p.context_size} -> {ctx} tokens ({k} halving{'s' if k > 1 else ''}; "
            f"{half_saves} MB saved per first halving at {p.kv_cache_per_1k:g} MB/1K): saves {saved} MB, total {new_total} MB",
            new_total, new_total <= budget))
    chosen = {p.id for p in services}
    for p in services:
        cands = sorted((c for c in catalog.presets.values()
                        if c.category == p.category and c.id not in chosen and c.vram_mb < p.vram_mb),
                       key=lambda c: (c.vram_mb, c.id))
        fitting = [c for c in cands if total - p.vram_mb + c.vram_mb <= budget]
        pick = fitting[0] if fitting else (cands[0] if cands else None)
        if pick is None:
            continue
        new_total = total - p.vram_mb + pick.vram_mb
        out.append(Alternative("swap", f"swap {p.id} ({p.vram_mb} MB) for {pick.id} ({pick.vram_mb} MB, same category "
                                       f"{p.category or '-'}): total {new_total} MB", new_total, new_total <= budget))
    out.sort(key=lambda a: (not a.fits, a.total_mb))
    return out


def simulate(catalog: Catalog, services: list[Preset], gpu_mb: int, reserve_mb: int = 0) -> FitResult:
    total = sum(p.vram_mb for p in services)
    alts: tuple[Alternative, ...] = ()
    if total > gpu_mb - reserve_mb:
        alts = tuple(alternatives(catalog, services, gpu_mb, reserve_mb))
    return FitResult(services=tuple(services), total_mb=total, gpu_mb=gpu_mb, reserve_mb=reserve_mb, alternatives=alts)


def vram_bar(segments: list[tuple[str, int]], total_mb: int, width: int = 60) -> str:
    """ASCII bar: one letter run per segment, '.' for free. Legend is printed by the caller."""
    if total_mb <= 0:
        return "[" + "?" * width + "]"
    chars: list[str] = []
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for i, (_, mb) in enumerate(segments):
        n = round(mb / total_mb * width)
        if mb > 0:
            n = max(n, 1)
        chars += [letters[i % 26]] * n
    if len(chars) > width:
        chars = chars[: width - 1] + ["!"]  # over budget
    chars += ["."] * (width - len(chars))
    return "[" + "".join(chars) + "]"
