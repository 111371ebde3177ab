"""The GPU: what the probe sees (NVML, nvidia-smi, or the simulator's shim)."""

from __future__ import annotations

from invoke import Collection, task


@task(help={"json": "Print JSON."})
def status(c, json_=False):
    """GPU bar plus every service (same view as `inv status`)."""
    from .views import host_status

    host_status(c, json_)


ns = Collection("gpu")
ns.add_task(status)
