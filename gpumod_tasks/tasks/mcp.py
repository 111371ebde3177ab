"""gpumod as an MCP server for agents (official `mcp` SDK)."""

from __future__ import annotations

from invoke import Collection, Exit, task


@task(iterable=["allowed_host"], help={
    "http": "Serve streamable HTTP instead of stdio.",
    "host": "With --http: address to bind (default 127.0.0.1; anything else requires a token).",
    "port": "With --http: port (default 8765).",
    "token": "With --http: require 'Authorization: Bearer TOKEN' (default: $GPUMOD_MCP_TOKEN, or the file "
             "$GPUMOD_MCP_TOKEN_FILE names).",
    "allowed-host": "With --http: another name clients reach the server by; repeatable (other Host headers: 421).",
})
def serve(c, http=False, host="127.0.0.1", port=8765, token=None, allowed_host=None):
    """Serve gpumod to agents over MCP (stdio by default, --http for streamable HTTP).

    Tools: gpu_mode_switch, gpu_mode_status, gpu_mode_verify, simulate_mode, service_list,
    service_status, model_info; the catalog as resources (gpumod://modes, gpumod://presets).

    With -H the tools act on that remote host; a switch takes the same host lock as the CLI.
    """
    from ..webguard import Guard, is_loopback, secret_from

    key = None
    if http:  # refused before anything is imported or opened
        try:
            key = secret_from(token, "GPUMOD_MCP_TOKEN", "MCP token")
        except ValueError as exc:
            raise Exit(str(exc), code=2) from None
        if not is_loopback(host) and not key:
            raise Exit(f"refusing to serve MCP on {host} without a token (--token, $GPUMOD_MCP_TOKEN or "
                       "$GPUMOD_MCP_TOKEN_FILE): its tools switch this host's modes", code=2)
    from ..cli_context import catalog, host_specs, open_target
    from ..mcp_server import build_server, http_app

    specs = host_specs(c)
    if len(specs) != 1:
        raise Exit(f"mcp.serve drives one host; -H resolved to {len(specs)} ({', '.join(s.name for s in specs)})", code=2)
    spec = specs[0]
    server = build_server(lambda: open_target(c, spec, catalog(spec)), lambda: catalog(spec), spec.label)
    if http:
        import uvicorn

        from ..daemon.app import server_config  # the router's HTTP settings: head timeout, keep-alive

        app = http_app(server, Guard(bind=host, allowed_hosts=tuple(allowed_host or ()), token=key))
        uvicorn.Server(server_config(app, host, int(port))).run()
    else:
        server.run("stdio")


ns = Collection("mcp")
ns.add_task(serve)
