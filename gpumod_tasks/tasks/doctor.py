"""Health checks of the box and the catalog; each exits 0 when OK, 1 on a problem, with the fix."""

from __future__ import annotations

from invoke import Collection, Exit, task


def _check(c, name, **kw):
    from .. import doctor
    from ..runtime import for_each_host

    failed = []

    def run(t, con):
        res = getattr(doctor, f"check_{name}")(t, **kw)
        doctor.print_result(con, res)
        if not res.ok:
            failed.append(t.spec.name)
            raise Exit(code=1)
        return res.message

    for_each_host(c, run)


@task
def gpu(c):
    """Driver reachable via NVML or nvidia-smi (or the simulator); total/used; which backend."""
    _check(c, "gpu")


@task
def presets(c):
    """Catalog valid, and known footguns (flags that inflate VRAM) flagged."""
    _check(c, "presets")


@task
def sysctl(c):
    """Kernel memory reserve: vm.min_free_kbytes at least the recommended 1048576 kB."""
    _check(c, "sysctl")


@task(name="oom-protection")
def oom_protection(c):
    """OOM drop-ins installed for the host's protected units, with the right directives."""
    _check(c, "oom_protection")


@task(help={"service-id": "Service whose venv to check against its preset's compat: constraints."})
def venv(c, service_id):
    """A service's venv satisfies its preset's compat: constraints (silent when it does)."""
    from .. import doctor
    from ..runtime import for_each_host

    def run(t, con):
        res = doctor.check_venv(t, service_id)
        if not res.ok:
            doctor.print_result(con, res)
            raise Exit(code=1)
        return "ok"

    for_each_host(c, run, header=False)


@task
def units(c):
    """Installed units equal freshly rendered ones."""
    _check(c, "units")


@task
def fleet(c):
    """The fleet's LiteLLM proxy (fleet: on the host): answering, master key required, bound where set."""
    _check(c, "fleet")


@task(name="all")
def all_(c):
    """Every check in a table; exit 0 only if all pass."""
    from .. import doctor
    from ..runtime import for_each_host

    def run(t, con):
        results = doctor.check_all(t)
        doctor.print_table(con, results)
        if not all(r.ok for r in results):
            raise Exit(code=1)
        return "all OK"

    for_each_host(c, run)


ns = Collection("doctor")
for t in (gpu, sysctl, presets, units, venv, fleet):
    ns.add_task(t)
ns.add_task(oom_protection, name="oom-protection")
ns.add_task(all_, name="all")
