"""gpumod as an MCP server (the official ``mcp`` SDK): the same functions the tasks call, as tools
an agent can use, and the catalog as resources.  Tools act on the host the server was started for
(``inv -H gpubox mcp.serve``); a switch takes the same host lock as the CLI.  Bad input becomes a
tool error that names what is known (modes, services).

Over HTTP the same front door as the router daemon's (``webguard``) stands before the SDK's app:
the bearer token (required off loopback), ``Host`` and ``Origin``.  The SDK's own DNS-rebinding
settings get the same host list where they can express it (a fixed bind address); its own
static-token route would need an OAuth issuer, which a token in a file does not have."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .catalog.model import Catalog
from .errors import GpumodError, SwitchFailed, UnknownName
from .target import Target


def preset_dict(p: Any) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "category": p.category, "driver": p.driver.value, "port": p.port,
            "vram_mb": p.vram_mb, "sleep_mode": p.sleep_mode.value, "context_size": p.context_size,
            "model": p.model_id or p.model_path, "depends_on": list(p.depends_on), "router": p.router or None}


def mode_dict(cat: Catalog, m: Any) -> dict[str, Any]:
    return {"id": m.id, "name": m.name, "description": m.description, "services": list(m.service_ids),
            "vram_mb": sum(cat.presets[s].vram_mb for s in m.service_ids if s in cat.presets)}


def gpumod_version() -> str:
    """gpumod's version as installed (package metadata), else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gpumod")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def quiet_http_loggers() -> None:
    """httpx and httpcore log a line per request at INFO, and every status probe is requests."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def build_server(open_target: Callable[[], Any], load_catalog: Callable[[], Catalog], host_label: str) -> Any:
    """``open_target()`` is a context manager yielding a Target for the served host."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("gpumod", version=gpumod_version(), log_level="WARNING", instructions=(
        f"Switch the GPU host {host_label} between modes of inference services without running out of VRAM. "
        "Use simulate_mode before a switch you are unsure fits; gpu_mode_status shows what runs."))
    quiet_http_loggers()  # after the SDK configured logging

    @contextmanager
    def target() -> Iterator[Target]:
        try:
            with open_target() as t:
                yield t
        except UnknownName as exc:
            raise ToolError(str(exc)) from None
        except SwitchFailed as exc:
            raise ToolError("\n".join([str(exc), *exc.state_lines])) from None
        except GpumodError as exc:
            raise ToolError(str(exc)) from None

    def known_mode(cat: Catalog, mode: str) -> None:
        if mode not in cat.modes:
            raise ToolError(f"unknown mode {mode!r}; known: {', '.join(sorted(cat.modes))}")

    def known_service(cat: Catalog, sid: str) -> None:
        if sid not in cat.presets:
            raise ToolError(f"unknown service {sid!r}; known: {', '.join(sorted(cat.presets))}")

    @server.tool()
    def gpu_mode_switch(mode: str) -> dict[str, Any]:
        """Switch the GPU host to a mode: sleep or stop what leaves, verify VRAM is released, wake or start
        what arrives. Refuses a mode that does not fit. Returns what changed and how long it took."""
        from .switch import switch

        known_mode(load_catalog(), mode)
        with target() as t:
            t.ensure_sim()
            out = switch(t, mode)
            return {"host": t.spec.name, **out.report.as_dict()} if out.report else {"host": t.spec.name, "mode": mode}

    @server.tool()
    def gpu_mode_status() -> dict[str, Any]:
        """The current mode, every GPU's VRAM (``gpus``: per GPU its total, used, free, each service's MB and
        other processes there) and every service's state (running, sleeping, stopped, ...) and GPUs."""
        from .observe import observe
        from .status import observed_dict

        with target() as t:
            t.ensure_sim()
            return observed_dict(t, observe(t))

    @server.tool()
    def gpu_mode_verify(mode: str = "") -> dict[str, Any]:
        """Check that every service of a mode (default: the current one) is running and healthy."""
        from .observe import observe

        with target() as t:
            seen = observe(t)
            mode_id = mode or seen.record.mode
            if not mode_id:
                raise ToolError("no mode is recorded on the host; name one")
            known_mode(t.catalog, mode_id)
            m = t.catalog.modes[mode_id]
            bad = seen.not_running(m.service_ids, [ms.id for ms in m.services if ms.sleep_on_idle])
            return {"mode": mode_id, "ok": not bad, "problems": bad}

    @server.tool()
    def simulate_mode(mode: str, add: list[str] | None = None) -> dict[str, Any]:
        """Would a mode (plus extra services) fit in VRAM? Changes nothing. Lists alternatives when not.
        With several GPUs: where each service would go (``placement``) and each GPU's figures (``gpus``)."""
        from .fit import simulate
        from .gpu_use import fit_per_gpu, fit_placement, simulate_on_gpus

        cat = load_catalog()
        known_mode(cat, mode)
        ids = list(cat.modes[mode].service_ids)
        for s in add or []:
            known_service(cat, s)
            if s not in ids:
                ids.append(s)
        with target() as t:
            gpu_mb = t.spec.gpu_total_mb or t.gpu_total_hint
            r = simulate(cat, [cat.presets[i] for i in ids], gpu_mb, t.spec.reserve_mb)
            on_gpus = simulate_on_gpus(cat, [cat.presets[i] for i in ids], t.spec, t.spec.reserve_mb)
        doc = {"mode": mode, "services": ids, **r.as_dict()}
        per_gpu = fit_per_gpu(r, cat.presets)
        if on_gpus is not None:  # several GPUs: the planner's placement and per-GPU verdict
            doc.update(on_gpus.as_dict())
        elif per_gpu or "gpus" not in doc:
            doc.update(placement={sid: list(ix) for sid, ix in fit_placement(r)}, gpus=[g.as_dict() for g in per_gpu])
        return doc

    @server.tool()
    def service_list() -> list[dict[str, Any]]:
        """Every service in the catalog: id, driver, port, VRAM, sleep mode."""
        cat = load_catalog()
        return [preset_dict(p) for p in cat.presets.values()]

    @server.tool()
    def service_status(service_id: str) -> dict[str, Any]:
        """One service's state on the host: running / sleeping / stopped / unhealthy / failed, VRAM, pid."""
        from .observe import observe
        from .status import observed_dict

        known_service(load_catalog(), service_id)
        with target() as t:
            d = observed_dict(t, observe(t, [service_id]))
            return next(s for s in d["services"] if s["id"] == service_id)

    @server.tool()
    def model_info(model: str, context: int = 0) -> dict[str, Any]:
        """Parameters, weight size, KV cache per 1K tokens and a VRAM estimate for a model directory,
        a .gguf file or a Hugging Face id (on the machine running this server)."""
        from .modelinfo import inspect_model

        try:
            mi, note = inspect_model(model)
        except GpumodError as exc:
            raise ToolError(str(exc)) from None
        ctx = context or min(mi.max_context or 32768, 32768)
        return {**mi.as_dict(ctx), "note": note or None}

    @server.tool()
    def gpu_mode_history(limit: int = 20) -> list[dict[str, Any]]:
        """Past switches and service operations on this host, newest first: what changed, each step
        with its duration and status, how long it took and whether it worked."""
        from .history import load

        if limit < 1:
            raise ToolError(f"limit must be at least 1, not {limit}")
        with target() as t:
            return load(t.spec.name, limit)

    @server.resource("gpumod://modes", mime_type="application/json", description="Every mode of the catalog.")
    def modes_resource() -> str:
        cat = load_catalog()
        return json.dumps([mode_dict(cat, m) for m in cat.modes.values()], indent=1)

    @server.resource("gpumod://presets", mime_type="application/json", description="Every service preset of the catalog.")
    def presets_resource() -> str:
        return json.dumps([preset_dict(p) for p in load_catalog().presets.values()], indent=1)

    @server.resource("gpumod://modes/{mode_id}", mime_type="application/json", description="One mode.")
    def mode_resource(mode_id: str) -> str:
        cat = load_catalog()
        known_mode(cat, mode_id)
        return json.dumps(mode_dict(cat, cat.modes[mode_id]), indent=1)

    return server


def http_app(server: Any, guard: Any) -> Any:
    """The SDK's streamable-HTTP app behind gpumod's front door (``webguard.Guard``)."""
    from mcp.server.transport_security import TransportSecuritySettings

    from .webguard import WILDCARDS, header

    if guard.bind in WILDCARDS:  # any IP literal is fine there, which the SDK's list cannot say: the guard checks
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    else:
        hosts = sorted(f"[{n}]" if ":" in n else n for n in guard.names)
        security = TransportSecuritySettings(
            allowed_hosts=[*hosts, *(f"{h}:*" for h in hosts)],
            allowed_origins=[f"{scheme}://{h}{port}" for scheme in ("http", "https") for h in hosts for port in ("", ":*")])
    inner = server.streamable_http_app(host=guard.bind, transport_security=security)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            no = guard.refusal(scope["headers"])
            if no is None and not guard.authorized(header(scope["headers"], b"authorization")):
                no = (401, "missing or wrong token (Authorization: Bearer ...)")
            if no is not None:
                body = json.dumps({"error": no[1]}).encode()
                extra = [(b"www-authenticate", b"Bearer")] if no[0] == 401 else []
                await send({"type": "http.response.start", "status": no[0], "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]})
                await send({"type": "http.response.body", "body": body})
                return
        await inner(scope, receive, send)

    return app
