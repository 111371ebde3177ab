"""The top-level `status` task."""

from __future__ import annotations

from invoke import task


@task(help={"json": "Print JSON.", "watch": "Live dashboard, refreshed about once a second (Ctrl-C quits).",
            "interval": "With --watch: seconds between refreshes (default 1).",
            "count": "With --watch: stop after this many refreshes (default: until Ctrl-C)."})
def status(c, json_=False, watch=False, interval=1.0, count=0):
    """GPU bar plus every service: state, port, VRAM by pid, current mode and last switch."""
    if watch:
        from ..cli_context import for_each_host
        from ..dashboard import watch as run_watch

        def run(t, con):
            run_watch(t, con, float(interval), int(count))
            return "watched"

        for_each_host(c, run, header=False)
        return
    from .views import host_status

    host_status(c, json_)
