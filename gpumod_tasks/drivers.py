"""How gpumod talks to each kind of server: health, sleep state, sleep and wake.

Behaviour is that of the real servers (../shared/reference/servers.md):
- vLLM dev routes: ``POST /sleep?level=N``; ``POST /wake_up`` (repeatable ``tags``); level 2 wakes
  as weights -> ``collective_rpc reload_weights`` -> kv_cache; ``GET /is_sleeping``.  0.28 answers
  sleep/wake with an empty body, 0.33 with JSON: both are accepted.  While loading, vLLM does not
  listen at all (connection refused), and ``/health`` stays 200 while asleep.
- llama.cpp router: ``/health`` is always 200, so readiness is the model's status in ``GET /models``;
  ``POST /models/load`` answers at spawn, so we wait for ``loaded``; unload answers at once.
- custom (fastapi) servers use vLLM's sleep routes.
"""

from __future__ import annotations

import json
from typing import Any

from .catalog.model import Driver, Preset, SleepMode
from .errors import HostError
from .host.base import Host
from .probe import Health, Probe
from .render import router_model_name


def _get(host: Host, port: int, path: str, timeout: float) -> tuple[int, str]:
    import httpx

    try:
        r = host.http.get(host.base_url(port) + path, timeout=timeout)
        return r.status_code, r.text
    except httpx.ConnectError:
        return 0, "connection refused"
    except httpx.TimeoutException:
        return -1, f"timed out after {timeout}s"
    except httpx.HTTPError as exc:
        return -2, f"{type(exc).__name__}: {exc}"


def parse_router_models(text: str) -> dict[str, dict[str, Any]]:
    """``GET /models`` of a llama.cpp router -> {model id: entry}. Aliases map to their entry too."""
    data = json.loads(text)
    out: dict[str, dict[str, Any]] = {}
    for e in data.get("data", []):
        out[e["id"]] = e
        for a in e.get("aliases") or []:
            out.setdefault(a, e)
    return out


def router_status(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "missing"
    st = entry.get("status") or {}
    value = st.get("value", "unloaded") if isinstance(st, dict) else str(st)
    if isinstance(st, dict) and st.get("failed"):
        return "failed"
    return str(value)


def probe(host: Host, preset: Preset, timeout: float = 2.0) -> Probe:
    """Health and sleep state in as few requests as the server allows."""
    if preset.driver is Driver.LLAMACPP and preset.sleep_mode is SleepMode.ROUTER:
        code, text = _get(host, preset.port, "/models", timeout)
        if code == 0:
            return Probe(Health.DOWN, detail=text)
        if code != 200:
            return Probe(Health.BAD, detail=f"GET /models -> {code} {text[:200]}")
        try:
            st = router_status(parse_router_models(text).get(router_model_name(preset)))
        except (ValueError, KeyError) as exc:
            return Probe(Health.BAD, detail=f"GET /models: unparseable: {exc}")
        if st == "loaded":
            return Probe(Health.OK, router_status=st)
        if st == "sleeping":  # idle-asleep child (--sleep-idle-seconds): wakes on the next request
            return Probe(Health.OK, router_status=st)
        if st == "loading":
            return Probe(Health.LOADING, router_status=st)
        if st in ("unloaded", "downloaded"):
            return Probe(Health.OK, sleeping=True, router_status=st)
        return Probe(Health.BAD, router_status=st, detail=f"router reports model {router_model_name(preset)!r} as {st}")
    if preset.can_sleep and preset.health_endpoint == "/health":
        # one request answers both: /is_sleeping only answers 200 from a live server
        scode, found = _sleep_probe(host, preset, timeout)
        if found is not None:
            return found
        if scode == 0:
            return Probe(Health.DOWN, detail="connection refused")
    code, text = _get(host, preset.port, preset.health_endpoint, timeout)
    if code == 0:
        return Probe(Health.DOWN, detail=text)
    if code == 503 and "Loading model" in text:
        return Probe(Health.LOADING, detail=text[:200])
    if code != 200:
        return Probe(Health.BAD, detail=f"GET {preset.health_endpoint} -> {code} {text[:200]}")
    if preset.can_sleep and preset.health_endpoint != "/health":
        _, found = _sleep_probe(host, preset, timeout)
        if found is not None:
            return found
    return Probe(Health.OK)


def _sleep_probe(host: Host, preset: Preset, timeout: float) -> tuple[int, Probe | None]:
    """``GET /is_sleeping``: a Probe when it answered 200 with the expected body."""
    code, text = _get(host, preset.port, "/is_sleeping", timeout)
    if code == 200:
        try:
            return code, Probe(Health.OK, sleeping=bool(json.loads(text).get("is_sleeping")))
        except (ValueError, AttributeError):
            pass
    return code, None


def _post(host: Host, preset: Preset, path: str, *, json_body: Any = None, params: Any = None, timeout: float = 600) -> Any:
    import httpx

    url = host.base_url(preset.port) + path
    try:
        r = host.http.post(url, json=json_body, params=params, timeout=timeout)
    except httpx.HTTPError as exc:
        raise HostError(host.name, f"{preset.id}: POST {path} failed: {type(exc).__name__}: {exc}") from exc
    if r.status_code >= 400:
        raise HostError(host.name, f"{preset.id}: POST {path} -> {r.status_code} {r.text[:300]}")
    return r


def sleep(host: Host, preset: Preset, level: int) -> None:
    if preset.sleep_mode is SleepMode.ROUTER:
        _unload(host, preset)
        return
    _post(host, preset, "/sleep", params={"level": level})


def _router_post(host: Host, preset: Preset, path: str, timeout: float) -> Any:
    import httpx

    try:
        return host.http.post(host.base_url(preset.port) + path, json={"model": router_model_name(preset)}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise HostError(host.name, f"{preset.id}: POST {path} failed: {type(exc).__name__}: {exc}") from exc


def _unload(host: Host, preset: Preset) -> None:
    r = _router_post(host, preset, "/models/unload", 30)
    if r.status_code == 400 and "not running" in r.text:
        return  # already unloaded: converged
    if r.status_code >= 400:
        raise HostError(host.name, f"{preset.id}: POST /models/unload -> {r.status_code} {r.text[:300]}")


def wake(host: Host, preset: Preset, level: int) -> None:
    """Wake a sleeping service; returns when the server says it is awake (router: ``loaded``)."""
    if preset.sleep_mode is SleepMode.ROUTER:
        r = _router_post(host, preset, "/models/load", 60)
        if r.status_code == 400 and "already running" in r.text:
            return
        if r.status_code >= 400:
            raise HostError(host.name, f"{preset.id}: POST /models/load -> {r.status_code} {r.text[:300]}")
        return  # the caller's health gate waits for status "loaded"
    if level == 2:
        # weights first, then reload them (level 2 discarded them), then the KV cache
        _post(host, preset, "/wake_up", params=[("tags", "weights")])
        _post(host, preset, "/collective_rpc", json_body={"method": "reload_weights"})
        _post(host, preset, "/wake_up", params=[("tags", "kv_cache")])
    else:
        _post(host, preset, "/wake_up")


def load_router_model(host: Host, preset: Preset) -> None:
    """After a router unit starts, load its model (autoload is off in gpumod's units)."""
    wake(host, preset, 0)
