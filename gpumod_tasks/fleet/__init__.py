"""One OpenAI endpoint over several boxes: LiteLLM's proxy in front of each box's router daemon.

gpumod does not route between boxes itself: it writes LiteLLM's config from the inventory and
keeps the deployments' ``order`` truthful about where each model is awake (``sync.py``)."""

from ..inventory import FLEET_KEYS
from .config import STATE_ORDER, Deployment, deployments, litellm_config
from .settings import Box, FleetSettings, fleet_settings

__all__ = ["FLEET_KEYS", "STATE_ORDER", "Box", "Deployment", "FleetSettings", "deployments", "fleet_settings", "litellm_config"]
