"""The task namespace: one collection per noun, composed here (``tasks.py`` just calls this)."""

from __future__ import annotations

from invoke import Collection


def namespace() -> Collection:
    from . import doctor, fleet, gpu, host, mcp, mode, model, router, service, sim, status, template

    ns = Collection()
    for mod in (mode, service, host, doctor, template, gpu, sim, model, mcp, router, fleet):
        ns.add_collection(mod.ns)
    ns.add_task(status.status)
    # long flags only: Invoke's generated short flags collide into oddities like "--" for --no-quiesce
    for coll in [ns, *ns.collections.values()]:
        for t in coll.tasks.values():
            t.auto_shortflags = False
    return ns
