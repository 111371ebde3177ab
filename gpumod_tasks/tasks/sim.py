"""The simulated GPU host: a VRAM ledger, an nvidia-smi shim and stand-in servers (no GPU needed)."""

from __future__ import annotations

import sys

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
    from ..cli_context import for_each_host
    from ..unit_install import install_all

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
    from ..cli_context import for_each_host

    def run(t, con):
        _sim_only(t)
        stopped = _stop_units(t, include_failed=False)
        con.print(f"stopped {len(stopped)} services")
        return f"{len(stopped)} stopped"

    for_each_host(c, run)


@task
def reset(c):
    """Stop everything, clear the ledger's allocations and forget the recorded mode."""
    from ..cli_context import for_each_host
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


@task(help={"jobs": "Parallel compile jobs (default: all cores)."})
def llama_server(c, jobs=None):
    """Build the real llama.cpp `llama-server` (CPU only) from the pinned llama-cpp-python source; print its path.

    Cached under ~/.cache/gpumod/llama-server/VERSION (or $GPUMOD_CACHE): the first build takes
    minutes, later calls are instant. Point a host at it with `vars: {llama_server_bin: PATH}` and
    `sim_real: [llamacpp]` to run the bundled llama.cpp presets for real on the simulated GPU.
    """
    from ..llamacpp.build import BuildError, build_llama_server

    try:
        b = build_llama_server(jobs=int(jobs) if jobs else None, progress=lambda m: print(m, file=sys.stderr, flush=True))
    except BuildError as exc:
        raise Exit(f"llama-server build failed: {exc}", code=1) from None
    print(b.path)
    print("cached" if b.cached else f"built in {b.seconds:.0f} s", file=sys.stderr)


@task(help={"dir": "Directory to write the models into.", "names": "Comma-separated model names (default: the bundled llama.cpp presets' file names)."})
def tiny_gguf(c, dir, names=None):
    """Write tiny random-weight llama GGUFs (~470 KB each) for a real llama-server to load."""
    from ..cli_context import catalog
    from ..engines.llamacpp import router_model_name
    from ..llamacpp.gguf_tiny import write_tiny_gguf

    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
    else:
        wanted = [router_model_name(p) for p in catalog().presets.values() if p.driver.value == "llamacpp"]
    for i, n in enumerate(wanted):
        print(write_tiny_gguf(f"{dir}/{n}.gguf", seed=i))


ns = Collection("sim")
ns.add_task(llama_server)  # type: ignore[arg-type]
ns.add_task(tiny_gguf)  # type: ignore[arg-type]
for t in (up, down, reset):
    ns.add_task(t)  # type: ignore[arg-type]
