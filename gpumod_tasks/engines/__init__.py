"""One home per inference engine: ``vllm``, ``llamacpp``, ``fastapi``, ``docker``.

Each engine module holds its command line, its probe, its sleep and wake, and the name it gives
its model; its sleep modes and default residual VRAM are a row in ``caps`` (read by the catalog,
which must not load engine code).  The rest of gpumod asks through the functions below.

Importing this package loads no engine code, no host code and no httpx: the registry is loaded on
the first lookup, and each engine imports httpx on its first request.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from .base import Command, Engine, Health, Probe

if TYPE_CHECKING:
    from ..catalog.model import Driver, Preset
    from ..host.base import Host

__all__ = ["Command", "Engine", "Health", "Probe", "engine_for", "probe", "sleep", "upstream_name", "wake"]


def engine_for(what: Preset | Driver | str) -> Engine:
    """The engine of a preset, a ``Driver`` or a driver name."""
    from .registry import ENGINES

    if isinstance(what, Enum):
        name = str(what.value)
    elif isinstance(what, str):
        name = what
    else:
        name = what.driver.value
    return ENGINES[name]


def probe(host: Host, preset: Preset, timeout: float = 2.0) -> Probe:
    """Health and sleep state in as few requests as the server allows.  Never raises for what a port
    answers: an answer of the wrong shape is ``Health.BAD`` with a detail (one odd port makes that
    one service ``error``, never the whole observation)."""
    if host.listens(preset.port) is False:
        return Probe(Health.DOWN, detail="connection refused")  # every engine's answer, without an HTTP request
    try:
        return engine_for(preset).probe(host, preset, timeout)
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeError) as exc:  # a parser missed a shape
        return Probe(Health.BAD, detail=f"unexpected answer: {type(exc).__name__}: {exc}")


def sleep(host: Host, preset: Preset, level: int) -> None:
    engine_for(preset).sleep(host, preset, level)


def wake(host: Host, preset: Preset, level: int) -> None:
    """Wake a sleeping service; returns when the server accepted it (router: the caller waits for
    ``loaded``)."""
    engine_for(preset).wake(host, preset, level)


def upstream_name(preset: Preset) -> str:
    """What the service itself calls its model: a llama.cpp router its models-dir entry, others the
    served name (vLLM's --served-model-name, llama-server's --alias)."""
    return engine_for(preset).upstream_name(preset)
