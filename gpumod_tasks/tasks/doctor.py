"""Health checks of the box and the catalog; each exits 0 when OK, 1 on a problem, with the fix.

With ``--json`` each prints ``{"host", "ok", "checks": [{"name", "ok", "detail", "fix"}]}`` on stdout
(one document per host) instead; the exit code is the same.
"""

from __future__ import annotations

from invoke import Collection, Exit, task

JSON_HELP = {"json": "Print JSON: host, ok, and each check's name, ok, detail and fix (same exit code)."}


def _as_json(host, results) -> dict:
    return {"host": host, "ok": all(r.ok for r in results),
            "checks": [{"name": r.name, "ok": r.ok, "detail": r.message, "fix": "" if r.ok else r.fix} for r in results]}


def _run(c, checks, json_, *, table=False, quiet_ok=False, summary=None):
    """Run ``checks(target)`` (a list of CheckResult) on every -H host: print them, exit 1 if any failed."""
    from .. import doctor
    from ..cli_context import for_each_host
    from ..ui import print_json

    def run(t, con):
        results = checks(t)
        ok = all(r.ok for r in results)
        if json_:
            print_json(_as_json(t.spec.name, results))
        elif table:
            doctor.print_table(con, results)
        elif not (quiet_ok and ok):
            for r in results:
                doctor.print_result(con, r)
        if not ok:
            raise Exit(code=1)
        return summary or "; ".join(r.message for r in results)

    for_each_host(c, run, as_json=json_, header=not quiet_ok)


def _check(c, name, json_):
    from .. import doctor

    _run(c, lambda t: [getattr(doctor, f"check_{name}")(t)], json_)


@task(help=JSON_HELP)
def gpu(c, json_=False):
    """Driver reachable via NVML or nvidia-smi (or the simulator); total/used; which backend."""
    _check(c, "gpu", json_)


@task(help=JSON_HELP)
def presets(c, json_=False):
    """Catalog valid, and known footguns (flags that inflate VRAM) flagged."""
    _check(c, "presets", json_)


@task(help={"write": "Write the measured figures into the presets (in place: comments and key order kept).", **JSON_HELP})
def footprints(c, write=False, json_=False):
    """Declared VRAM (vram_mb, sleep_vram_mb) within 10 % of what the services were measured holding.

    A problem names the preset's file:line and the value to write; --write writes it. Figures are
    learned on the target after every switch or service operation (its footprints.json)."""
    from .. import doctor

    _run(c, lambda t: [doctor.check_footprints(t, write=write)], json_)


@task(help=JSON_HELP)
def sysctl(c, json_=False):
    """Kernel memory reserve: vm.min_free_kbytes at least the recommended 1048576 kB."""
    _check(c, "sysctl", json_)


@task(name="oom-protection", help=JSON_HELP)
def oom_protection(c, json_=False):
    """OOM drop-ins installed for the host's protected units, with the right directives."""
    _check(c, "oom_protection", json_)


@task(help={"service-id": "Service whose venv to check against its preset's compat: constraints.", **JSON_HELP})
def venv(c, service_id, json_=False):
    """A service's venv satisfies its preset's compat: constraints (silent when it does)."""
    from .. import doctor

    _run(c, lambda t: [doctor.check_venv(t, service_id)], json_, quiet_ok=True, summary="ok")


@task(help=JSON_HELP)
def units(c, json_=False):
    """Installed units equal freshly rendered ones."""
    _check(c, "units", json_)


@task(help=JSON_HELP)
def fleet(c, json_=False):
    """The fleet's LiteLLM proxy (fleet: on the host): answering, master key required, bound where set."""
    _check(c, "fleet", json_)


@task(name="all", help=JSON_HELP)
def all_(c, json_=False):
    """Every check in a table; exit 0 only if all pass."""
    from .. import doctor

    _run(c, doctor.check_all, json_, table=True, summary="all OK")


ns = Collection("doctor")
for t in (gpu, sysctl, presets, footprints, units, venv, fleet):
    ns.add_task(t)
ns.add_task(oom_protection, name="oom-protection")
ns.add_task(all_, name="all")
