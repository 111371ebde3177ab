"""The engine seam: typed values every engine returns, and the interface each engine implements.

A leaf for the rest of gpumod: it imports no host code and no httpx, so the planner and the
observation's pure parts can use ``Health`` and ``Probe`` without loading I/O.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, ClassVar

from . import caps

if TYPE_CHECKING:
    from ..catalog.model import Preset
    from ..host.base import Host
    from ..hostfacts import HostFacts
    from ..inventory import HostSpec


class Health(str, Enum):
    OK = "ok"
    LOADING = "loading"  # connection refused while the unit runs, or a 503 "Loading model"
    BAD = "bad"  # answered with an error, an answer of the wrong shape, or timed out
    DOWN = "down"  # nothing listening


@dataclass(frozen=True)
class Probe:
    """What one HTTP round of probing learned about a service."""

    health: Health
    sleeping: bool = False
    detail: str = ""  # last answer, for error messages
    router_status: str = ""  # llama.cpp router: unloaded | loading | loaded | sleeping | failed


@dataclass(frozen=True)
class Command:
    """An engine's command line and the environment variables it needs (its safety variables win
    over the preset's ``env``)."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    private_env: tuple[tuple[str, str], ...] = ()  # values the command must not show (docker -e NAME)


class Engine(ABC):
    """One kind of inference server.  Adding an engine: a module with a subclass, a line in
    ``registry.ENGINES``, a row in ``caps`` (and the ``Driver`` name in the catalog)."""

    name: ClassVar[str]  # the preset's ``driver:``
    sim_flavor: ClassVar[str]  # which stand-in plays it on a simulated host

    @property
    def sleep_modes(self) -> tuple[str, ...]:
        return caps.SLEEP_MODES[self.name]

    @property
    def default_residual_mb(self) -> int:
        return caps.DEFAULT_RESIDUAL_MB[self.name]

    @abstractmethod
    def command(self, preset: Preset, host: HostSpec, facts: HostFacts, bind: str) -> Command:
        """The real server's command line, listening on ``bind`` and ``preset.port``."""

    @abstractmethod
    def stand_in_args(self, preset: Preset, peers: tuple[Preset, ...]) -> Command:
        """The engine-specific arguments (and variables) of the simulator's stand-in."""

    def upstream_name(self, preset: Preset) -> str:
        """What the server itself calls its model (the name requests are forwarded under)."""
        return preset.served_model

    @abstractmethod
    def probe(self, host: Host, preset: Preset, timeout: float) -> Probe:
        """Health and sleep state; never raises on an odd answer (that is ``Health.BAD``)."""

    def sleep(self, host: Host, preset: Preset, level: int) -> None:
        from ..errors import HostError

        raise HostError(host.name, f"{preset.id}: driver {self.name} cannot sleep")

    def wake(self, host: Host, preset: Preset, level: int) -> None:
        """Wake a sleeping service; returns when the server accepted it (the caller's health gate
        waits for ready)."""
        from ..errors import HostError

        raise HostError(host.name, f"{preset.id}: driver {self.name} cannot wake")


# flags that would move a server's listen address or port: those come from the preset alone
# (``unit_vars.bind``, ``port``), so a host-wide ``vars.extra_args`` can never expose every server
LISTEN_FLAGS = ("--host", "--port", "--uds")


def extra_args(preset: Preset, host: HostSpec) -> list[str]:
    """The preset's ``unit_vars.extra_args``, else the host's ``vars.extra_args``; a word that sets
    the listen address or port is refused (RenderError), not stripped: the preset author sees why."""
    from ..errors import RenderError

    if "extra_args" in preset.unit_vars:
        words, where = preset.unit_vars["extra_args"], f"{preset.file or preset.id}: unit_vars.extra_args"
    else:
        words, where = host.vars.get("extra_args", []), f"host {host.name}: vars.extra_args"
    if isinstance(words, str) or not isinstance(words, (list, tuple)):
        raise RenderError(f"{where} must be a list of words, got {type(words).__name__}")
    out = [str(w) for w in words]
    for w in out:
        if w.split("=", 1)[0] in LISTEN_FLAGS:
            raise RenderError(f"{where}: {w!r} is refused: the listen address and port come from the preset "
                              f"(unit_vars.bind, port), never from extra_args")
    return out
