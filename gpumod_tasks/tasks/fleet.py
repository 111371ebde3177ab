"""One OpenAI URL over several boxes: LiteLLM's proxy in front of the boxes' router daemons."""

from __future__ import annotations

from invoke import Collection, Exit, task

AS_HOST = "The inventory host whose fleet: settings apply (default: the only host that has fleet:)."


def _settings(as_host):
    from ..cli_context import inventory
    from ..fleet.proxy import require_litellm
    from ..fleet.settings import fleet_settings

    fs = fleet_settings(inventory(), as_host)
    require_litellm(fs.python)
    return fs


@task(help={"as-host": AS_HOST, "out": "Write the config here instead of fleet.config (default <state_dir>/fleet/litellm.yaml).",
            "json": "Print the deployments as JSON."})
def config(c, as_host=None, out=None, json=False):
    """Write LiteLLM's config from the inventory and what each box's daemon reports now.

    One model name per servable model; one deployment per (box, model) at that box's router daemon,
    ordered awake first, then asleep, then where a switch would make it fit. Keys stay in files:
    the config names environment variables that fleet.serve fills from them.
    """
    from dataclasses import replace

    import httpx

    from ..cli_context import catalog
    from ..fleet.proxy import box_keys, write_config
    from ..ui import make_console

    fs = _settings(as_host)
    if out:
        fs = replace(fs, config=str(out))
    with httpx.Client(trust_env=False) as client:
        w = write_config(fs, catalog(), box_keys(fs), client)
    if json:
        import json as _json

        print(_json.dumps({"config": w.path, "deployments": w.orders,
                           "unreachable": [b for b, s in w.states.items() if s is None], "left_out": list(fs.skipped)}, indent=2))
        return
    con = make_console()
    con.print(f"{w.path}: {len(w.orders)} deployments over {len(fs.boxes)} boxes ({'written' if w.changed else 'unchanged'})")
    for b, s in w.states.items():
        if s is None:
            con.print(f"  [yellow]{b}: its router daemon did not answer GET /models; its deployments go last[/yellow]")
    for s in fs.skipped:
        con.print(f"  [yellow]left out {s}[/yellow]")
    for dep_id, order in sorted(w.orders.items(), key=lambda kv: (kv[0].split("/", 1)[1], kv[1])):
        con.print(f"  {dep_id:32} order {order}")


@task(help={"as-host": AS_HOST})
def serve(c, as_host=None):
    """Run LiteLLM's proxy in the foreground and keep its routing in step with the boxes.

    Every sync_interval_s (default 1 s) it reads each box's GET /models and rewrites the config
    when a state changed; a hook inside the proxy hands the new model list to its router within
    0.25 s. Ctrl-C (or SIGTERM) stops both.
    """
    from ..cli_context import catalog
    from ..fleet.proxy import serve as run

    fs = _settings(as_host)
    code = run(fs, catalog, lambda m: print(f"fleet: {m}", flush=True))
    if code:
        raise Exit(code=code)


ns = Collection("fleet")
ns.add_task(config)
ns.add_task(serve)
