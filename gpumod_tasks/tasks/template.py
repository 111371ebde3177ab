"""Units rendered from presets with Jinja2 templates: render, diff, install, uninstall."""

from __future__ import annotations

from invoke import Collection, Exit, task


@task(help={"service-id": "Service whose unit to print."})
def render(c, service_id):
    """Print the systemd unit rendered for one service on the target host."""
    from ..cli_context import for_each_host
    from ..render import unit_for
    from ..unit_install import placement_now

    def run(t, con):
        p = t.catalog.preset(service_id)
        gpus = (placement_now(t) or {}).get(p.id)  # a box with several GPUs: the GPUs it holds (or would get)
        print(unit_for(t.catalog, p, t.spec, t.render_facts(), t.project_root, gpus)[0], end="")
        return "ok"

    for_each_host(c, run, header=False)


@task
def diff(c):
    """Show what install-all would change (unified diffs); exit 1 if anything differs."""
    _install(c, check=True)


@task(help={"check": "Dry run: show diffs and change nothing (Ansible-style --check)."})
def install_all(c, check=False):
    """Write units whose content changed, remove units of deleted presets, daemon-reload once if needed.

    Running it twice reports 0 changed.
    """
    _install(c, check=check)


def _install(c, check):
    from ..cli_context import for_each_host
    from ..unit_install import install_all as do_install

    def run(t, con):
        t.ensure_sim()
        rep = do_install(t, check=check)
        for unit in rep.changed:
            con.print(f"[yellow]{'would change' if check else 'changed'}[/yellow] {unit}")
            if check:  # verbatim (no wrapping, no tab expansion), so the output is a diff `patch` applies
                con.file.write(rep.diffs[unit])
                con.file.flush()
        for unit in rep.removed:
            con.print(f"[red]{'would remove' if check else 'removed'}[/red] {unit}")
        verb = "would change" if check else "changed"
        con.print(f"{len(rep.changed)} {verb}, {len(rep.unchanged)} unchanged, {len(rep.removed)} removed"
                  + (" (daemon-reload done)" if rep.reloaded else ""))
        if check and (rep.changed or rep.removed):
            raise Exit(code=1)
        return f"{len(rep.changed)} changed"

    for_each_host(c, run)


@task
def uninstall(c):
    """Stop and remove every unit gpumod generated on the target."""
    from ..cli_context import for_each_host
    from ..unit_install import uninstall_all

    def run(t, con):
        removed = uninstall_all(t)
        con.print(f"removed {len(removed)} units: {', '.join(removed) or '-'}")
        return f"{len(removed)} removed"

    for_each_host(c, run)


ns = Collection("template")
for t in (render, diff, install_all, uninstall):
    ns.add_task(t)  # type: ignore[arg-type]
