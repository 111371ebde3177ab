"""The top-level `status` task."""

from __future__ import annotations

from invoke import task


@task(help={"json": "Print JSON."})
def status(c, json_=False):
    """GPU bar plus every service: state, port, VRAM by pid, current mode and last switch."""
    from ..status import host_status

    host_status(c, json_)
