"""Measured footprints: what each service really held, per state and GPU, and how long its
transitions took (pure: parse, dump, robust values, digests; no I/O).

The store is one small JSON file on the target next to the recorded mode
(``STATE_DIR/footprints.json``), so every controller, the MCP server and the router daemon see the
same figures::

    {"version": 1, "services": {"emb": {
        "figures": {"awake": [{"at": T, "digest": D, "gpu_mb": {"0": 2510}}, ...], "sleep_l1": [...]},
        "durations": {"start": [{"at": T, "digest": D, "s": 1.9}], "wake_l1": [...], ...}}}}

States: ``awake`` (health gate passed after a start, wake or router load), ``sleep_l1``,
``sleep_l2`` (asleep at that vLLM level), ``unloaded`` (a llama.cpp router model unloaded).
Duration kinds: ``start``, ``wake_l1``, ``wake_l2``, ``sleep_l1``, ``sleep_l2``, ``router_load``,
``router_unload``, ``stop``.

Every sample carries the digest of the preset and the rendered unit it ran with: a figure counts
only while the digest still matches, so editing a preset (or anything that changes its unit)
invalidates what was learned for it.

Robust value (``robust_mb``): the **maximum of the last 5 samples** with the current digest. A
plan must never under-count (an OOM is the failure gpumod exists to prevent), a settled server's
figure varies little from run to run, and the variations that matter are the high ones (a larger
CUDA graph capture, allocator fragmentation). A short window still lets a real decrease show after
five runs. Durations only rank choices, so they use the median of the last 5 (one slow cold start
from a cold page cache does not dominate).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

VERSION = 1
KEEP = 10  # samples kept per state / duration kind
WINDOW = 5  # samples the robust value looks at
STATES = ("awake", "sleep_l1", "sleep_l2", "unloaded")
DURATIONS = ("start", "wake_l1", "wake_l2", "sleep_l1", "sleep_l2", "router_load", "router_unload", "stop")
# fields of a preset that describe it without changing what runs (a figure survives edits of them)
_NOT_DIGESTED = {"vram_mb", "sleep_vram_mb", "file", "name", "description", "category", "declared_vram_mb",
                 "declared_sleep_vram_mb", "vram_source", "sleep_source", "residuals_mb", "learned_s", "measured_gpu_mb"}


def footprints_file(state_dir: str) -> str:
    return f"{state_dir}/footprints.json"


@dataclass(frozen=True)
class Sample:
    at: float
    digest: str
    gpu_mb: dict[int, int] = field(default_factory=dict, hash=False, compare=False)  # GPU index -> MB

    @property
    def total_mb(self) -> int:
        return sum(self.gpu_mb.values())


@dataclass(frozen=True)
class Timing:
    at: float
    digest: str
    s: float


@dataclass(frozen=True)
class Figure:
    """A robust value: the total MB, per GPU, and how many samples it rests on."""

    mb: int
    gpu_mb: dict[int, int]
    samples: int
    at: float  # the newest sample's time


@dataclass
class Footprints:
    figures: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)  # service -> state -> samples
    durations: dict[str, dict[str, list[Timing]]] = field(default_factory=dict)  # service -> kind -> timings

    def add_figure(self, sid: str, state: str, sample: Sample) -> None:
        rows = self.figures.setdefault(sid, {}).setdefault(state, [])
        rows.append(sample)
        del rows[:-KEEP]

    def add_duration(self, sid: str, kind: str, timing: Timing) -> None:
        rows = self.durations.setdefault(sid, {}).setdefault(kind, [])
        rows.append(timing)
        del rows[:-KEEP]

    def figure(self, sid: str, state: str, digest: str) -> Figure | None:
        return robust_mb(self.figures.get(sid, {}).get(state, []), digest)

    def seconds(self, sid: str, kind: str, digest: str = "") -> float | None:
        return robust_seconds(self.durations.get(sid, {}).get(kind, []), digest)

    def services(self) -> set[str]:
        return set(self.figures) | set(self.durations)


def robust_mb(samples: list[Sample], digest: str) -> Figure | None:
    """The maximum of the last ``WINDOW`` samples taken with ``digest`` (per GPU: the maximum of
    each GPU's share over the same samples); None when there is none."""
    rows = [s for s in samples if s.digest == digest][-WINDOW:]
    if not rows:
        return None
    top = max(rows, key=lambda s: (s.total_mb, s.at))
    per_gpu: dict[int, int] = {}
    for s in rows:
        for g, mb in s.gpu_mb.items():
            per_gpu[g] = max(per_gpu.get(g, 0), mb)
    return Figure(top.total_mb, per_gpu, len(rows), max(s.at for s in rows))


def robust_seconds(timings: list[Timing], digest: str = "") -> float | None:
    """The median of the last ``WINDOW`` timings with ``digest`` (any digest when none match:
    an edit changes how long a load takes far less than what it holds)."""
    rows = [t for t in timings if t.digest == digest] or list(timings)
    rows = rows[-WINDOW:]
    if not rows:
        return None
    xs = sorted(t.s for t in rows)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def digest_of(preset: object, unit_body: str) -> str:
    """The digest a figure is learned under: the preset's fields that change what runs, and the
    rendered unit's text (16 hex digits)."""
    data = {f.name: getattr(preset, f.name) for f in fields(preset)  # type: ignore[arg-type]
            if f.name not in _NOT_DIGESTED}
    text = json.dumps(data, sort_keys=True, default=_plain) + "\0" + unit_body
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(v: Any) -> Any:
    if hasattr(v, "value"):
        return v.value
    if hasattr(v, "__dataclass_fields__"):
        return {f.name: getattr(v, f.name) for f in fields(v)}
    return str(v)


def parse(text: str | None) -> Footprints:
    """The store in ``text``; nothing (or anything unreadable) is an empty store: figures are
    advisory, the declared ones apply until the next settled transition writes a good file."""
    fp = Footprints()
    if not text or not text.strip():
        return fp
    try:
        d = json.loads(text)
    except (ValueError, RecursionError):
        return fp
    services = d.get("services") if isinstance(d, dict) else None
    if not isinstance(services, dict):
        return fp
    for sid, sv in services.items():
        if not isinstance(sv, dict):
            continue
        for state, rows in _items(sv.get("figures")):
            for r in rows if isinstance(rows, list) else []:
                s = _sample(r)
                if s is not None:
                    fp.figures.setdefault(str(sid), {}).setdefault(str(state), []).append(s)
        for kind, rows in _items(sv.get("durations")):
            for r in rows if isinstance(rows, list) else []:
                t = _timing(r)
                if t is not None:
                    fp.durations.setdefault(str(sid), {}).setdefault(str(kind), []).append(t)
    return fp


def _items(v: Any) -> list[tuple[Any, Any]]:
    return list(v.items()) if isinstance(v, dict) else []


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _sample(r: Any) -> Sample | None:
    if not isinstance(r, dict) or not _num(r.get("at")) or not isinstance(r.get("digest"), str):
        return None
    g = r.get("gpu_mb")
    if not isinstance(g, dict):
        return None
    try:
        per = {int(k): int(v) for k, v in g.items() if _num(v)}
    except ValueError:
        return None
    return Sample(float(r["at"]), r["digest"], per)


def _timing(r: Any) -> Timing | None:
    if not isinstance(r, dict) or not _num(r.get("at")) or not _num(r.get("s")) or not isinstance(r.get("digest"), str):
        return None
    return Timing(float(r["at"]), r["digest"], float(r["s"]))


def dump(fp: Footprints) -> str:
    services: dict[str, Any] = {}
    for sid in sorted(fp.services()):
        figs = {st: [{"at": round(s.at, 3), "digest": s.digest, "gpu_mb": {str(g): mb for g, mb in sorted(s.gpu_mb.items())}}
                     for s in rows] for st, rows in sorted(fp.figures.get(sid, {}).items())}
        durs = {k: [{"at": round(t.at, 3), "digest": t.digest, "s": round(t.s, 3)} for t in rows]
                for k, rows in sorted(fp.durations.get(sid, {}).items())}
        services[sid] = {"figures": figs, "durations": durs}
    return json.dumps({"version": VERSION, "services": services}, indent=1, sort_keys=True) + "\n"


def sleep_state(level: int | None) -> str:
    """The figure state of a service asleep at ``level`` (0: a router model unloaded)."""
    return "unloaded" if not level else f"sleep_l{level}"
