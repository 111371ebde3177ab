"""One OpenAI endpoint over several boxes: LiteLLM's proxy in front of each box's router daemon.

gpumod does not route between boxes itself: it writes LiteLLM's config from the inventory and
keeps the deployments' ``order`` truthful about where each model is awake (``sync.py``).

The names below are loaded on first use: importing ``fleet.unit`` (every unit install reads its
name) does not load the config builder and the fit check with it."""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {"FLEET_KEYS": "..inventory", "STATE_ORDER": ".config", "Deployment": ".config", "deployments": ".config",
         "litellm_config": ".config", "Box": ".settings", "FleetSettings": ".settings", "fleet_settings": ".settings"}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name], __name__), name)
