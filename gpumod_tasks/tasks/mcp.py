"""gpumod as an MCP server for agents (official `mcp` SDK)."""

from __future__ import annotations

from invoke import Collection, Exit, task


@task(help={
    "http": "Serve streamable HTTP instead of stdio.",
    "host": "With --http: address to bind (default 127.0.0.1).",
    "port": "With --http: port (default 8765).",
})
def serve(c, http=False, host="127.0.0.1", port=8765):
    """Serve gpumod to agents over MCP (stdio by default, --http for streamable HTTP).

    Tools: gpu_mode_switch, gpu_mode_status, gpu_mode_verify, simulate_mode, service_list,
    service_status, model_info; the catalog as resources (gpumod://modes, gpumod://presets).

    With -H the tools act on that remote host; a switch takes the same host lock as the CLI.
    """
    from ..mcp_server import build_server
    from ..runtime import catalog, host_specs, open_target

    specs = host_specs(c)
    if len(specs) != 1:
        raise Exit(f"mcp.serve drives one host; -H resolved to {len(specs)} ({', '.join(s.name for s in specs)})", code=2)
    spec = specs[0]
    server = build_server(lambda: open_target(c, spec, catalog()), catalog, spec.label)
    if http:
        server.run("streamable-http", host=host, port=int(port))
    else:
        server.run("stdio")


ns = Collection("mcp")
ns.add_task(serve)
