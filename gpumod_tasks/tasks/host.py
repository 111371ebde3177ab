"""The box itself: first-time bootstrap."""

from __future__ import annotations

from invoke import Collection, task


@task(iterable=["mode"], help={
    "mode": "Mode whose sleep-capable services are warmed up (repeatable; default: the host's warm_modes).",
    "default-mode": "Mode to end in (default: the host's default_mode, else blank).",
    "no-warmup": "Skip the warm-up (start, health, sleep) of sleep-capable services.",
})
def bootstrap(c, mode=None, default_mode=None, no_warmup=False):
    """First-time setup, safe to re-run: prerequisites, dirs, units, warm-up, then the default mode."""
    from ..bootstrap import bootstrap as do_bootstrap
    from ..runtime import for_each_host

    def run(t, con):
        return do_bootstrap(t, con, warm_modes=list(mode or []), default_mode=default_mode, warmup=not no_warmup)

    for_each_host(c, run)


ns = Collection("host")
ns.add_task(bootstrap)
