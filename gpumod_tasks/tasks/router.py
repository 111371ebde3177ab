"""The model manager daemon: one URL for Open WebUI or an agent; models wake on demand."""

from __future__ import annotations

import logging
import sys

from invoke import Collection, Exit, task

LOG_LEVELS = ("debug", "info", "warning", "error")
# sd-daemon(3) priorities: journald reads a "<N>" prefix on a line as its level
JOURNAL_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{JOURNAL_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def configure_logging(level: str, stream=None) -> None:
    """One plain line per event on stderr, no colour. Under systemd (``$JOURNAL_STREAM``) each line
    carries its priority as journald reads it and no time (journald stamps lines itself);
    elsewhere a time and the level name. Our lines and uvicorn's go the same way."""
    import os

    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    for name in ("gpumod", "uvicorn"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.propagate = False
        lg.setLevel(level.upper() if name == "gpumod" else max(logging.WARNING, getattr(logging, level.upper())))
    for noisy in ("httpx", "httpcore"):  # a line per health probe otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)


@task(iterable=["allowed_host"], help={
    "port": "Port to listen on (default 8787).",
    "bind": "Address to bind (default 127.0.0.1; anything else requires an API key).",
    "api-key": "Require 'Authorization: Bearer KEY'. Prefer $GPUMOD_ROUTER_API_KEY_FILE (a file holding the key) or "
               "$GPUMOD_ROUTER_API_KEY: a key on the command line is visible to every user in `ps`.",
    "request-timeout": "Seconds a request may wait for its model to become ready before a 503 (default 300).",
    "concurrency": "In-flight requests per model before 429 (default 64).",
    "restart-unhealthy": "Restart a service that hangs while its process lives.",
    "as-host": "Run on the box as this inventory host (its settings, reached locally); what the installed unit uses.",
    "allowed-host": "Another name clients reach the daemon by (the box's DNS name, a proxy's); repeatable. "
                    "Requests whose Host header names none of these, a loopback name or the bound address get 421.",
    "max-body-mb": "Largest request body accepted, in MB (default 32; more: 413).",
    "log-level": "debug, info (default: one line per switch, wake, idle sleep, refusal and error), warning or error.",
    "reconcile-s": "Re-observe the host this often, seconds (default 5): how soon GET /models shows a change made behind its back.",
})
def serve(c, port=8787, bind="127.0.0.1", api_key=None, request_timeout=300.0, concurrency=64, restart_unhealthy=False,
          as_host=None, allowed_host=None, max_body_mb=32, log_level="info", reconcile_s=5.0):
    """Run the router daemon: manager API (/health, /models, /switch) and OpenAI routes (/v1/...).

    A request for a sleeping or stopped model wakes it (or switches to a mode that has it), waits in
    a bounded queue meanwhile, and is forwarded when the model is ready; streaming passes through.
    Runs on the GPU box itself (it talks to the services on 127.0.0.1); install it as a unit with the
    inventory's `router_daemon:` setting and `template.install-all`.
    """
    if str(log_level).lower() not in LOG_LEVELS:
        raise Exit(f"--log-level {log_level}: one of {', '.join(LOG_LEVELS)}", code=2)
    try:
        max_body = int(float(max_body_mb) * 1024 * 1024)
    except ValueError:
        max_body = 0
    if max_body <= 0:
        raise Exit(f"--max-body-mb {max_body_mb}: a positive number of MB", code=2)
    import uvicorn

    from ..cli_context import catalog, host_specs, open_target
    from ..daemon.app import Announce, Limits, create_app, server_config
    from ..daemon.metrics import Metrics
    from ..daemon.model_manager import ModelManager, Options, import_swap_path
    from ..webguard import Guard, is_loopback

    if as_host:
        from dataclasses import replace

        from ..cli_context import inventory

        inv = inventory()
        if as_host not in inv.hosts:
            raise Exit(f"--as-host {as_host}: not in the inventory ({inv.file}); known: {', '.join(sorted(inv.hosts))}", code=2)
        specs = [replace(inv.hosts[as_host], connection="local")]  # this process runs on that box
    else:
        specs = host_specs(c)
    if len(specs) != 1 or not specs[0].is_local:
        raise Exit("router.serve runs on the GPU box itself (services bind 127.0.0.1 there): start it on the box, "
                   "or install it as a unit there with `router_daemon:` in the inventory and template.install-all", code=2)
    import os

    from ..apikey import checked_api_key

    key = None
    key_file = os.environ.get("GPUMOD_ROUTER_API_KEY_FILE")
    if api_key is not None:
        key = checked_api_key(api_key, "--api-key")
        key_file = None
    elif os.environ.get("GPUMOD_ROUTER_API_KEY"):
        key = checked_api_key(os.environ["GPUMOD_ROUTER_API_KEY"], "$GPUMOD_ROUTER_API_KEY")
        key_file = None
    elif key_file:  # the unit points at a file, so the key never sits in a unit file
        try:
            with open(key_file) as fh:
                key = checked_api_key(fh.read(), key_file)
        except OSError as exc:
            raise Exit(f"cannot read the API key file {key_file}: {exc}", code=2) from None
    if not is_loopback(bind) and not key:
        raise Exit(f"refusing to listen on {bind} without an API key (--api-key, $GPUMOD_ROUTER_API_KEY "
                   "or $GPUMOD_ROUTER_API_KEY_FILE)", code=2)
    configure_logging(str(log_level))
    log = logging.getLogger("gpumod.router")
    if api_key is not None:
        log.warning("--api-key on the command line is visible to other users in `ps`; "
                    "prefer $GPUMOD_ROUTER_API_KEY_FILE or $GPUMOD_ROUTER_API_KEY")
    spec = specs[0]
    metrics = Metrics()
    mgr = ModelManager(lambda: open_target(c, spec), lambda: catalog(spec),
                       Options(request_timeout_s=float(request_timeout), concurrency=int(concurrency),
                               restart_unhealthy=bool(restart_unhealthy), reconcile_s=float(reconcile_s)), metrics)
    limits = Limits(max_body_bytes=max_body)
    guard = Guard(bind=bind, allowed_hosts=tuple(allowed_host or ()), token=key)
    # registered in the state dir while it serves, so a CLI switch on this box drains through it
    announce = Announce(bind=bind, port=int(port), api_key=key or "",
                        api_key_file=os.path.abspath(key_file) if key and key_file else "")
    app = create_app(mgr, metrics, guard=guard, limits=limits, announce=announce)
    shown = f"[{bind}]" if ":" in bind else bind
    server = uvicorn.Server(server_config(app, bind, int(port), limits))
    import_swap_path()
    log.info("listening on http://%s:%d for host %s (log level %s)", shown, int(port), spec.name, str(log_level).lower())
    # what start-up built (modules, the app, the catalog) lives as long as the daemon: left out of
    # every later collection, so a collection during a swap walks only what serving made since
    import gc

    gc.collect()
    gc.freeze()
    server.run()


ns = Collection("router")
ns.add_task(serve)
