"""What one round of HTTP probing learned about a service (a plain value; the probing itself is
the engine's)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Health(str, Enum):
    OK = "ok"
    LOADING = "loading"  # connection refused while the unit runs, or a 503 "Loading model"
    BAD = "bad"  # answered with an error / timed out
    DOWN = "down"  # nothing listening


@dataclass(frozen=True)
class Probe:
    """What one HTTP round of probing learned about a service."""

    health: Health
    sleeping: bool = False
    detail: str = ""  # last answer, for error messages
    router_status: str = ""  # llama.cpp router: unloaded | loading | loaded | sleeping | failed
