"""The model manager daemon: one URL for Open WebUI or an agent; models wake on demand."""

from __future__ import annotations

import os

from invoke import Collection, Exit, task


@task(help={
    "port": "Port to listen on (default 8787).",
    "bind": "Address to bind (default 127.0.0.1; anything else requires an API key).",
    "api-key": "Require 'Authorization: Bearer KEY' (default: $GPUMOD_ROUTER_API_KEY).",
    "request-timeout": "Seconds a request may wait for its model to become ready before a 503 (default 300).",
    "concurrency": "In-flight requests per model before 429 (default 64).",
    "restart-unhealthy": "Restart a service that hangs while its process lives.",
    "as-host": "Run on the box as this inventory host (its settings, reached locally); what the installed unit uses.",
    "reconcile-s": "Re-observe the host this often, seconds (default 5): how soon GET /models shows a change made behind its back.",
})
def serve(c, port=8787, bind="127.0.0.1", api_key=None, request_timeout=300.0, concurrency=64, restart_unhealthy=False,
          as_host=None, reconcile_s=5.0):
    """Run the router daemon: manager API (/health, /models, /switch) and OpenAI routes (/v1/...).

    A request for a sleeping or stopped model wakes it (or switches to a mode that has it), waits in
    a bounded queue meanwhile, and is forwarded when the model is ready; streaming passes through.
    Runs on the GPU box itself (it talks to the services on 127.0.0.1); install it as a unit with the
    inventory's `router_daemon:` setting and `template.install-all`.
    """
    import uvicorn

    from ..daemon.app import create_app
    from ..daemon.core import ModelManager, Options
    from ..daemon.metrics import Metrics
    from ..runtime import catalog, host_specs, open_target

    if as_host:
        from dataclasses import replace

        from ..runtime import inventory

        inv = inventory()
        if as_host not in inv.hosts:
            raise Exit(f"--as-host {as_host}: not in the inventory ({inv.file}); known: {', '.join(sorted(inv.hosts))}", code=2)
        specs = [replace(inv.hosts[as_host], connection="local")]  # this process runs on that box
    else:
        specs = host_specs(c)
    if len(specs) != 1 or not specs[0].is_local:
        raise Exit("router.serve runs on the GPU box itself (services bind 127.0.0.1 there): start it on the box, "
                   "or install it as a unit there with `router_daemon:` in the inventory and template.install-all", code=2)
    key = api_key or os.environ.get("GPUMOD_ROUTER_API_KEY") or None
    key_file = os.environ.get("GPUMOD_ROUTER_API_KEY_FILE")
    if not key and key_file:  # the unit points at a file, so the key never sits in a unit file
        try:
            with open(key_file) as fh:
                key = fh.read().strip() or None
        except OSError as exc:
            raise Exit(f"cannot read the API key file {key_file}: {exc}", code=2) from None
    if bind not in ("127.0.0.1", "localhost", "::1") and not key:
        raise Exit(f"refusing to listen on {bind} without an API key (--api-key or $GPUMOD_ROUTER_API_KEY)", code=2)
    spec = specs[0]
    metrics = Metrics()
    mgr = ModelManager(lambda: open_target(c, spec), catalog,
                       Options(request_timeout_s=float(request_timeout), concurrency=int(concurrency),
                               restart_unhealthy=bool(restart_unhealthy), reconcile_s=float(reconcile_s)), metrics)
    app = create_app(mgr, metrics, api_key=key)
    uvicorn.run(app, host=bind, port=int(port), log_level="warning", access_log=False, proxy_headers=False)


ns = Collection("router")
ns.add_task(serve)
