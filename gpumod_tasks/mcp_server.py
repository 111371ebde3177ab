"""gpumod as an MCP server (the official ``mcp`` SDK): the same functions the tasks call, as tools
an agent can use, and the catalog as resources.  Tools act on the host the server was started for
(``inv -H gpubox mcp.serve``); a switch takes the same host lock as the CLI.  Bad input becomes a
tool error that names what is known (modes, services)."""

from __future__ import annotations

import json
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


def build_server(open_target: Callable[[], Any], load_catalog: Callable[[], Catalog], host_label: str) -> Any:
    """``open_target()`` is a context manager yielding a Target for the served host."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("gpumod", instructions=(
        f"Switch the GPU host {host_label} between modes of inference services without running out of VRAM. "
        "Use simulate_mode before a switch you are unsure fits; gpu_mode_status shows what runs."))

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
        """The current mode, the GPU's VRAM and every service's state (running, sleeping, stopped, ...)."""
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
            bad = seen.not_running(m.service_ids)
            return {"mode": mode_id, "ok": not bad, "problems": bad}

    @server.tool()
    def simulate_mode(mode: str, add: list[str] | None = None) -> dict[str, Any]:
        """Would a mode (plus extra services) fit in VRAM? Changes nothing. Lists alternatives when not."""
        from .fit import simulate

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
        return {"mode": mode, "services": ids, **r.as_dict()}

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
