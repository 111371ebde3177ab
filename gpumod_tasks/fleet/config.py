"""LiteLLM's config from the inventory, the catalog and what each box's daemon reports (pure).

One ``model_name`` per servable model, one deployment per (box, model) pointing at that box's
router daemon. ``order`` says where LiteLLM sends a request first: LiteLLM keeps only the
deployments of the lowest order among those not cooling down, and falls back to the next order
when they fail (``litellm.utils.get_order_filtered_deployments`` and the router's order fallbacks).

    awake (active)                 1            every box where it is awake shares the load
    asleep / switching             10 + i      one box (the first in fleet order) is woken, not all
    stopped, a mode with it fits   20 + i      a switch there would serve it
    in error                       30 + i
    box not answering              40 + i      last resort; LiteLLM's retries skip it meanwhile
    no mode with it fits the box   (no deployment)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..catalog.model import Catalog
from ..fit import simulate
from .settings import Box, FleetSettings

STATE_ORDER = {"active": 1, "sleeping": 10, "switching": 10, "stopped": 20, "error": 30, "unreachable": 40}
HOOK_MODULE = "gpumod_fleet_hook"


@dataclass(frozen=True)
class Deployment:
    model: str  # LiteLLM's model_name: the preset's served name
    service: str
    box: str
    state: str
    order: int

    @property
    def id(self) -> str:
        return f"{self.box}/{self.service}"


def fits_somewhere(cat: Catalog, sid: str, box: Box) -> bool:
    """Some mode containing ``sid`` fits this box's GPU (unknown GPU size: assume it does)."""
    modes = [m for m in cat.modes.values() if sid in m.service_ids]
    if not modes:
        return False
    if box.gpu_mb <= 0:
        return True
    return any(simulate(cat, [cat.presets[s] for s in m.service_ids], box.gpu_mb, box.reserve_mb).fits for m in modes)


def deployments(fs: FleetSettings, cat: Catalog, seen: Mapping[str, Mapping[str, str] | None]) -> list[Deployment]:
    """``seen[box]``: service id -> state from the box's ``GET /models``; None when the box did not
    answer. A box absent from ``seen`` is treated as not answering."""
    out = []
    for sid, p in sorted(cat.presets.items()):
        for i, box in enumerate(fs.boxes, 1):
            states = seen.get(box.name)
            if states is None:
                state = "unreachable"
            elif sid not in states:
                continue  # that box's catalog has no such service
            else:
                state = str(states[sid])
            if state in ("stopped", "unreachable") and not fits_somewhere(cat, sid, box):
                continue
            rank = STATE_ORDER.get(state, STATE_ORDER["error"])
            out.append(Deployment(model=p.served_model, service=sid, box=box.name, state=state,
                                  order=rank if rank == 1 else rank + i))
    return out


def litellm_config(fs: FleetSettings, deps: list[Deployment]) -> dict[str, Any]:
    """The whole config file. Secrets are never in it: keys are ``os.environ/VAR`` references that
    LiteLLM resolves from the proxy's environment (``fleet.serve`` reads the key files into it)."""
    urls = {b.name: b for b in fs.boxes}
    model_list = []
    for d in deps:
        box = urls[d.box]
        model_list.append({
            "model_name": d.model,
            "litellm_params": {
                "model": f"openai/{d.model}", "api_base": f"{box.url}/v1",
                "api_key": f"os.environ/{box.key_env}" if box.key_file else "none",
                "order": d.order, "timeout": fs.timeout_s, "stream_timeout": fs.timeout_s,
            },
            # a stable id keeps a deployment's cooldown and metrics across reloads
            "model_info": {"id": d.id, "gpumod_box": d.box, "gpumod_service": d.service, "gpumod_state": d.state},
        })
    return {
        "model_list": model_list,
        "router_settings": {
            "routing_strategy": "simple-shuffle",
            "num_retries": fs.num_retries,
            # a retryable failure re-picks another deployment of the same model before giving up
            "enable_weighted_failover": True,
            "allowed_fails": fs.allowed_fails,
            "cooldown_time": fs.cooldown_time_s,
            "timeout": fs.timeout_s,
            "retry_after": 0,
        },
        "litellm_settings": {
            # the hook re-reads model_list when fleet.serve rewrites this file (no database needed)
            "callbacks": [f"{HOOK_MODULE}.hook"],
            "request_timeout": fs.timeout_s,
        },
        "general_settings": {
            "master_key": "os.environ/LITELLM_MASTER_KEY",
            # health checks send real completions: they would wake every sleeping model
            "background_health_checks": False,
        },
    }


def dump(cfg: dict[str, Any]) -> str:
    import io

    from ruamel.yaml import YAML

    y = YAML(typ="safe", pure=True)
    y.default_flow_style = False
    y.sort_base_mapping_type_on_output = False  # type: ignore[attr-defined,assignment]
    buf = io.StringIO()
    buf.write("# Generated by gpumod (inv fleet.config / fleet.serve) from the inventory and the boxes' states.\n"
              "# Do not edit: fleet.serve rewrites it whenever a box's states change.\n")
    y.dump(cfg, buf)
    return buf.getvalue()
