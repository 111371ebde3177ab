"""Which engine serves a preset: one line per engine."""

from __future__ import annotations

from . import docker, fastapi, llamacpp, vllm
from .base import Engine

ENGINES: dict[str, Engine] = {e.name: e for e in (vllm.ENGINE, llamacpp.ENGINE, fastapi.ENGINE, docker.ENGINE)}
