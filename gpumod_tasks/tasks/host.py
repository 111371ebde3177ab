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
    from ..cli_context import for_each_host

    def run(t, con):
        return do_bootstrap(t, con, warm_modes=list(mode or []), default_mode=default_mode, warmup=not no_warmup)

    for_each_host(c, run)


def _protection(c, which):
    from .. import protect
    from ..cli_context import for_each_host

    def run(t, con):
        res = getattr(protect, f"install_{which}")(t)
        for path in res.changed:
            con.print(f"[yellow]changed[/yellow] {path}")
        for path in res.unchanged:
            con.print(f"[green]ok[/green]      {path}")
        for note in res.notes:
            con.print(f"[dim]{note}[/dim]")
        summary = f"{len(res.changed)} changed, {len(res.unchanged)} unchanged"
        con.print(summary)
        return summary

    for_each_host(c, run)


@task
def sysctl(c):
    """Kernel memory reserve: vm.min_free_kbytes = 1048576 as a sysctl.d drop-in, applied with sysctl --system.

    Idempotent (a second run changes nothing); runs scripts/install-gpumod-sysctl.sh on the box.
    A host's root_prefix installs under another root and touches nothing live.
    """
    _protection(c, "sysctl")


@task(name="oom-protection")
def oom_protection(c):
    """Memory floor and low OOM score for the host's oom_protect units (sshd, code-server) via drop-ins.

    gpumod's own model units run with a high OOM score instead. Idempotent; runs
    scripts/oom-protection/install.sh on the box.
    """
    _protection(c, "oom_protection")


ns = Collection("host")
ns.add_task(bootstrap)  # type: ignore[arg-type]
ns.add_task(sysctl)  # type: ignore[arg-type]
ns.add_task(oom_protection, name="oom-protection")  # type: ignore[arg-type]
