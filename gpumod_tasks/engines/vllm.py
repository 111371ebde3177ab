"""vLLM (``vllm serve``): its command line, probe, sleep levels and wake sequence.

Behaviour is that of the real server (../shared/reference/servers.md):
- dev routes (``VLLM_SERVER_DEV_MODE=1`` and ``--enable-sleep-mode``): ``POST /sleep?level=N&mode=M``;
  ``POST /wake_up`` (repeatable ``tags``); level 2 wakes as weights -> ``collective_rpc
  reload_weights`` -> kv_cache; ``GET /is_sleeping``.  0.28 answers sleep/wake with an empty body,
  0.33 with JSON: both are accepted.
- ``mode`` says what happens to requests in flight: ``abort`` (vLLM's default) cuts them off,
  ``wait`` lets them finish first, ``keep`` freezes them until wake.  gpumod sends ``wait``, and a
  server from before pause modes (< 0.17) that refuses the parameter is asked again without it.
- while loading, vLLM does not listen at all (connection refused); ``/health`` stays 200 asleep.

Custom ("fastapi") servers speak the same sleep routes; ``fastapi.py`` reuses them from here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..errors import HostError, RenderError
from . import http
from .base import Command, Engine, Health, Probe, extra_args

if TYPE_CHECKING:
    from ..catalog.model import Preset
    from ..host.base import Host
    from ..hostfacts import HostFacts
    from ..inventory import HostSpec

SLEEP_DRAIN_MODE = "wait"


def gpu_memory_utilization(vram_mb: int, total_mb: int) -> float:
    """vLLM takes a fraction of *total* device memory; users think in MB.  Round up to 3 decimals
    so the budget is never below the preset's figure, and cap at 0.99."""
    if total_mb <= 0:
        raise RenderError("GPU total memory is unknown; declare gpu.total_mb in the inventory")
    return min(0.99, math.ceil(vram_mb / total_mb * 1000) / 1000)


def parse_is_sleeping(text: str) -> bool:
    """``GET /is_sleeping`` -> asleep?  ValueError for any other shape than ``{"is_sleeping": bool}``."""
    data = http.json_object(text)
    value = data.get("is_sleeping")
    if not isinstance(value, bool):
        raise ValueError(f"is_sleeping is {type(value).__name__}, not a boolean: {text[:80]!r}")
    return value


def _sleep_probe(host: Host, preset: Preset, timeout: float) -> tuple[http.Answer, Probe | None]:
    """``GET /is_sleeping``: a Probe when it answered 200 (BAD when the answer has the wrong shape)."""
    a = http.get(host, preset.port, "/is_sleeping", timeout)
    if a.status != 200:
        return a, None
    try:
        return a, Probe(Health.OK, sleeping=parse_is_sleeping(a.text))
    except ValueError as exc:
        return a, Probe(Health.BAD, detail=f"GET /is_sleeping: unexpected answer: {exc}")


def probe_sleep_routes(host: Host, preset: Preset, timeout: float) -> Probe:
    """Health and sleep state of a server with vLLM's sleep routes, in as few requests as it allows."""
    if preset.can_sleep and preset.health_endpoint == "/health":
        # one request answers both: /is_sleeping only answers 200 from a live server
        a, found = _sleep_probe(host, preset, timeout)
        if found is not None:
            return found
        if a.refused:
            return Probe(Health.DOWN, detail="connection refused")
    pr = http.health_probe(host, preset, timeout)
    if pr.health is Health.OK and preset.can_sleep and preset.health_endpoint != "/health":
        _, found = _sleep_probe(host, preset, timeout)
        if found is not None:
            return found
    return pr


def _check(host: Host, preset: Preset, path: str, a: http.Answer) -> None:
    if a.status <= 0 or a.status >= 400:
        raise HostError(host.name, f"{preset.id}: {a.describe('POST ' + path)}")


def sleep_routes_sleep(host: Host, preset: Preset, level: int) -> None:
    """``POST /sleep?level=N&mode=wait``: in-flight requests finish before the engine sleeps."""
    timeout = http.sleep_timeout(host, preset)
    a = http.post(host, preset.port, "/sleep", params={"level": level, "mode": SLEEP_DRAIN_MODE}, timeout=timeout)
    if a.status in (400, 422):
        # a server from before pause modes refuses the parameter: ask again without it (a bad level
        # is refused again, and that answer is the one reported)
        a = http.post(host, preset.port, "/sleep", params={"level": level}, timeout=timeout)
    _check(host, preset, "/sleep", a)


def sleep_routes_wake(host: Host, preset: Preset, level: int) -> None:
    timeout = http.sleep_timeout(host, preset)
    steps: list[tuple[str, dict[str, Any]]]
    if level == 2:
        # weights first, then reload them (level 2 discarded them), then the KV cache
        steps = [("/wake_up", {"params": [("tags", "weights")]}),
                 ("/collective_rpc", {"json_body": {"method": "reload_weights"}}),
                 ("/wake_up", {"params": [("tags", "kv_cache")]})]
    else:
        steps = [("/wake_up", {})]
    for path, kw in steps:
        _check(host, preset, path, http.post(host, preset.port, path, timeout=timeout, **kw))


class SleepRoutes(Engine):
    """An engine whose server speaks vLLM's dev routes (``/sleep``, ``/wake_up``, ``/is_sleeping``):
    vLLM itself, and custom servers that implement them."""

    def probe(self, host: Host, preset: Preset, timeout: float) -> Probe:
        return probe_sleep_routes(host, preset, timeout)

    def sleep(self, host: Host, preset: Preset, level: int) -> None:
        sleep_routes_sleep(host, preset, level)

    def wake(self, host: Host, preset: Preset, level: int) -> None:
        sleep_routes_wake(host, preset, level)


class Vllm(SleepRoutes):
    name = "vllm"
    sim_flavor = "vllm"

    def command(self, preset: Preset, host: HostSpec, facts: HostFacts, bind: str) -> Command:
        uv = {**host.vars, **preset.unit_vars}
        argv = [str(uv.get("vllm_bin", "vllm")), "serve", preset.model_path or preset.model_id, "--host", bind, "--port", str(preset.port),
                "--served-model-name", preset.served_model,
                # a fraction of each GPU: under tensor parallel, each rank's share of the total
                "--gpu-memory-utilization", f"{gpu_memory_utilization(max(preset.per_gpu_mb(preset.vram_mb)), facts.gpu_total_mb):g}"]
        env: list[tuple[str, str]] = []
        if preset.gpus > 1:
            argv += ["--tensor-parallel-size", str(preset.gpus)]
        if preset.context_size:
            argv += ["--max-model-len", str(preset.context_size)]
        if uv.get("task"):
            argv += ["--task", str(uv["task"])]
        if preset.can_sleep:
            argv.append("--enable-sleep-mode")
            env.append(("VLLM_SERVER_DEV_MODE", "1"))
        argv += extra_args(preset, host)
        return Command(tuple(argv), tuple(env))

    def stand_in_args(self, preset: Preset, peers: tuple[Preset, ...]) -> Command:
        argv = ["--model", preset.model_id or preset.id, "--served-model-name", preset.served_model,
                "--vram-mb", str(preset.vram_mb), "--sleep-vram-mb", str(preset.residual_mb)]
        if preset.gpus > 1:
            argv += ["--tensor-parallel-size", str(preset.gpus)]
        if preset.context_size:
            argv += ["--max-model-len", str(preset.context_size)]
        env: list[tuple[str, str]] = []
        if preset.can_sleep:
            argv.append("--enable-sleep-mode")
            env.append(("VLLM_SERVER_DEV_MODE", "1"))
        return Command(tuple(argv), tuple(env))

ENGINE = Vllm()
