"""HTTP to one port of a service, for the engines: answers as (status, text), never an exception.

The request goes through ``Host.ask`` (this machine: the standard library's http.client with
keep-alive; a remote box: httpx over SSH channels), so importing an engine loads no HTTP client.
Status 0 means nothing listens, -1 a timeout, -2 any other transport error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import Health, Probe

if TYPE_CHECKING:
    from ..catalog.model import Preset
    from ..host.base import Host

# POST /sleep and /wake_up wait for the server (a drain with mode=wait, a level-2 reload): bounded,
# so a hung server cannot hold the host lock for long.  60 s covers a large model's wake (published
# figures: 3-6 s) with room for draining short requests; a preset (``unit_vars.sleep_timeout_s``) or
# a host (``vars.sleep_timeout_s``) sets its own.
DEFAULT_SLEEP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Answer:
    status: int
    text: str

    @property
    def refused(self) -> bool:
        return self.status == 0

    def describe(self, what: str) -> str:
        if self.status == 0:
            return f"{what}: connection refused"
        if self.status < 0:
            return f"{what}: {self.text}"
        return f"{what} -> {self.status} {self.text[:300]}"


def sleep_timeout(host: Host, preset: Preset) -> float:
    """The sleep/wake timeout in seconds: the preset's, else the host's, else 60 s."""
    for raw in (preset.unit_vars.get("sleep_timeout_s"), host.spec.vars.get("sleep_timeout_s")):
        if raw is None:
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and value > 0:
            return value
    return DEFAULT_SLEEP_TIMEOUT_S


def get(host: Host, port: int, path: str, timeout: float) -> Answer:
    return _answer(host.ask("GET", host.base_url(port) + path, timeout=timeout), f"timed out after {timeout:g}s")


def post(host: Host, port: int, path: str, *, timeout: float, json_body: Any = None, params: Any = None) -> Answer:
    return _answer(host.ask("POST", host.base_url(port) + path, json=json_body, params=params, timeout=timeout),
                   f"timed out after {timeout:g}s (set unit_vars.sleep_timeout_s or the host's vars.sleep_timeout_s)")


def _answer(got: tuple[int, str], timed_out: str) -> Answer:
    """The host's ``(status, text)`` (0 refused, -1 timed out, -2 other transport error) as an Answer."""
    status, text = got
    return Answer(status, timed_out if status == -1 else text)


def json_object(text: str) -> dict[str, Any]:
    """Parse an answer that must be a JSON object; ValueError (with what came) otherwise."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError(f"not JSON: {text[:80]!r}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}: {text[:80]!r}")
    return data


def health_probe(host: Host, preset: Preset, timeout: float) -> Probe:
    """``GET <health_endpoint>``: 200 is OK, 503 "Loading model" is loading, refused is down."""
    a = get(host, preset.port, preset.health_endpoint, timeout)
    if a.refused:
        return Probe(Health.DOWN, detail=a.text)
    if a.status == 503 and "Loading model" in a.text:
        return Probe(Health.LOADING, detail=a.text[:200])
    if a.status != 200:
        return Probe(Health.BAD, detail=a.describe(f"GET {preset.health_endpoint}"))
    return Probe(Health.OK)
