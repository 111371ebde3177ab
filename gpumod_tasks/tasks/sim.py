"""The simulated GPU host: a VRAM ledger, an nvidia-smi shim and stand-in servers (no GPU needed)."""

from __future__ import annotations

from invoke import Collection, Exit, task


def _sim_only(t):
    if not t.sim:
        raise Exit(f"host {t.spec.name} has a real NVIDIA GPU; sim tasks only act on simulated hosts", code=2)


def _stop_units(t, include_failed):
    """Stop every catalog unit that runs (and, if asked, clear failed ones); return those stopped."""
    units = [p.unit for p in t.catalog.presets.values()]
    hit = [u for u, s in t.manager.states(units).items() if s.is_running or (include_failed and s.is_failed)]
    for u in hit:
        t.manager.stop(u)
    return hit


@task
def up(c):
    """Create the simulated GPU (ledger + nvidia-smi shim) and install every service's stand-in unit."""
    from ..runtime import for_each_host
    from ..units import install_all

    def run(t, con):
        _sim_only(t)
        changed = t.ensure_sim()
        rep = install_all(t)
        g = t.gpu().primary
        con.print(f"simulated GPU: {g.name}, {g.total_mb} MB ({g.used_mb} MB used); shim: {t.shim_path}")
        con.print(f"{len(changed)} sim parts created, units: {len(rep.changed)} changed, {len(rep.unchanged)} unchanged")
        return "up"

    for_each_host(c, run)


@task
def down(c):
    """Stop every gpumod service on the simulated host (the ledger and units stay)."""
    from ..runtime import for_each_host

    def run(t, con):
        _sim_only(t)
        stopped = _stop_units(t, include_failed=False)
        con.print(f"stopped {len(stopped)} services")
        return f"{len(stopped)} stopped"

    for_each_host(c, run)


@task
def reset(c):
    """Stop everything, clear the ledger's allocations and forget the recorded mode."""
    from ..runtime import for_each_host
    from ..state import mode_file

    def run(t, con):
        _sim_only(t)
        _stop_units(t, include_failed=True)
        t.host.remove_file(mode_file(t.state_dir))
        t.host.run(["sh", "-c", 'rm -f "$1"/gpu*.json', "sh", t.sim_dir])
        t.ensure_sim()
        con.print("simulated host reset: services stopped, ledger empty, no mode recorded")
        return "reset"

    for_each_host(c, run)


ns = Collection("sim")
for t in (up, down, reset):
    ns.add_task(t)
