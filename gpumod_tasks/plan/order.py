"""Dependency order: dependencies start first, dependents stop first (pure)."""

from __future__ import annotations

from ..catalog.model import Catalog


def topo_order(catalog: Catalog, ids: list[str]) -> list[str]:
    """Dependencies first; ties keep the given order. (Cycles are rejected by catalog validation.)"""
    wanted = set(ids)
    out: list[str] = []
    seen: set[str] = set()

    def visit(i: str) -> None:
        if i in seen:
            return
        seen.add(i)
        for d in catalog.presets[i].depends_on:
            if d in wanted:
                visit(d)
        out.append(i)

    for i in ids:
        visit(i)
    return out


def with_dependencies(catalog: Catalog, ids: list[str]) -> list[str]:
    """``ids`` and everything they depend on, transitively, dependencies first."""
    want: list[str] = []

    def add(i: str) -> None:
        if i in want:
            return
        for d in catalog.presets[i].depends_on:
            if d in catalog.presets:
                add(d)
        want.append(i)

    for i in ids:
        add(i)
    return want


def dependents_of(catalog: Catalog, sid: str) -> list[str]:
    """Every service that depends on ``sid``, transitively, dependents first (stop order)."""
    out: list[str] = []

    def add(i: str) -> None:
        for p in catalog.presets.values():
            if i in p.depends_on and p.id not in out:
                add(p.id)
                out.append(p.id)

    add(sid)
    return out
