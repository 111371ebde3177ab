"""The catalog: presets (one service each) and modes (bundles of services), read from YAML."""

from __future__ import annotations

from .load import load_catalog
from .model import Catalog, DockerSpec, Driver, Mode, ModeService, Preset, SleepMode

__all__ = ["Catalog", "DockerSpec", "Driver", "Mode", "ModeService", "Preset", "SleepMode", "load_catalog"]
