"""The JSON view of one observation, shared by `status --json`, `service.status`, `mode.status` and
the MCP tools: ``gpu`` (the first GPU, as with one), ``gpus`` (every GPU with the MB of each service
and of other processes on it), and per service its ``gpus`` (indices) and ``gpu_mb`` (index -> MB)."""

from __future__ import annotations

from typing import Any

from .gpu_use import gpu_uses, service_gpu_mb
from .observed import Observed
from .target import Target


def observed_dict(t: Target, seen: Observed) -> dict[str, Any]:
    cat = t.catalog
    g = seen.gpu.primary if seen.gpu and seen.gpu.gpus else None
    rec = seen.record
    uses = gpu_uses(seen)
    per = service_gpu_mb(uses)
    return {
        "host": t.spec.name,
        "simulated": seen.sim,
        "service_manager": seen.manager,
        "gpu": None if g is None else {"name": g.name, "total_mb": g.total_mb, "used_mb": g.used_mb, "free_mb": g.free_mb,
                                       "backend": seen.gpu.backend if seen.gpu else ""},
        "gpus": [u.as_dict() for u in uses],  # every GPU ("gpu" above is the first, as before)
        "gpu_error": seen.gpu_error or None,
        "mode": None if rec.failed else rec.mode,
        "mode_since": rec.since or None,
        "state": "failed" if rec.failed else "ok",
        "failure": rec.failure or None,
        "recorded_mode": rec.mode,
        "last_switch": rec.last_switch or None,
        "services": [{"id": sid, "state": o.state.value, "sleep_level": o.sleep_level, "port": cat.presets[sid].port,
                      "vram_mb": o.vram_mb, "pid": o.unit.main_pid or None, "unit": cat.presets[sid].unit,
                      "health": o.probe.health.value if o.probe else None, "in_mode": sid in _mode_ids(t, rec.mode),
                      "router_status": (o.probe.router_status or None) if o.probe else None,
                      "gpus": sorted(per.get(sid, {})), "gpu_mb": {str(i): mb for i, mb in sorted(per.get(sid, {}).items())}}
                     for sid, o in seen.services.items()],
        "other_gpu_processes": {str(k): v for k, v in seen.unmapped_pids.items()},
        "observed_in_s": round(seen.took_s, 3),
    }


def _mode_ids(t: Target, mode: str | None) -> set[str]:
    return set(t.catalog.modes[mode].service_ids) if mode in t.catalog.modes else set()
