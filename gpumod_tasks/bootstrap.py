"""host.bootstrap: first-time setup that a re-run leaves unchanged."""

from __future__ import annotations

from typing import Any

from .errors import GpumodError, PlanRefused
from .observe import SvcState, observe
from .protect import install_oom_protection, install_sysctl
from .services import service_action
from .switch import switch
from .target import Target
from .unit_install import install_all


def bootstrap(t: Target, con: Any, *, warm_modes: list[str], default_mode: str | None, warmup: bool = True) -> str:
    changed: list[str] = []

    def step(msg: str, did: bool | list[str]) -> None:
        mark = "[yellow]changed[/yellow]" if did else "[green]ok[/green]"
        con.print(f"  {mark:28} {msg}")

    con.print("[bold]prerequisites[/bold]")
    r = t.host.run(["python3", "-c", "import sys; print(sys.version.split()[0])"], ok=(0, 127))
    if r.exit_code != 0:
        raise GpumodError(f"[{t.spec.name}] python3 is missing on the box (gpumod needs only its standard library)")
    step(f"python3 {r.stdout.strip()}", False)
    step(f"service manager: {t.manager.kind}", False)
    sim_changes = t.ensure_sim()
    changed += sim_changes
    g = t.gpu().primary
    step(f"GPU: {g.name}, {g.total_mb} MB ({'simulated' if t.sim else 'driver reachable'})", sim_changes)

    if t.manager.kind == "systemd":
        r = t.host.run(["systemctl", "--version"], ok=(0, 1, 127))
        if r.exit_code != 0:
            raise GpumodError(f"[{t.spec.name}] systemctl does not answer: {r.stderr.strip()}")

    con.print("[bold]directories and protections[/bold]")
    t.host.makedirs(t.state_dir, sudo=t.spec.scope == "system" and not t.sim)
    step(f"state dir {t.state_dir}", False)
    for op in (install_sysctl, install_oom_protection):
        res = op(t)
        changed += res.changed
        step(f"{res.name}: {len(res.changed)} changed, {len(res.unchanged)} unchanged"
             + (f" ({'; '.join(res.notes)})" if res.notes else ""), res.changed)

    con.print("[bold]units[/bold]")
    rep = install_all(t)
    changed += rep.changed + rep.removed
    step(f"units: {len(rep.changed)} changed, {len(rep.unchanged)} unchanged, {len(rep.removed)} removed", rep.changed or rep.removed)

    modes = warm_modes or list(t.spec.warm_modes)
    target_mode = default_mode or t.spec.default_mode or "blank"
    t.catalog.mode(target_mode)
    if warmup and modes:
        con.print("[bold]warm-up[/bold] (start each sleep-capable service once, wait for health, put it to sleep)")
        ids: list[str] = []
        for m in modes:
            ids += [s for s in t.catalog.mode(m).service_ids if t.catalog.presets[s].can_sleep and s not in ids]
        final = set(t.catalog.mode(target_mode).service_ids)
        for sid in ids:
            o = observe(t, [sid], with_gpu=False).services[sid]
            if o.state in (SvcState.SLEEPING,) or (o.state is SvcState.RUNNING and sid in final):
                step(f"{sid}: already {o.state.value}", False)
                continue
            try:
                service_action(t, "start", sid, quiesce=False)
                service_action(t, "sleep", sid)
            except PlanRefused as exc:
                con.print(f"  [yellow]skipped[/yellow] {sid}: {exc}")
                continue
            changed.append(f"warm {sid}")
            step(f"{sid}: started, healthy, asleep", True)

    con.print(f"[bold]default mode[/bold] {target_mode}")
    out = switch(t, target_mode)
    did = not out.plan.converged
    step(f"mode {target_mode}" + (f" ({len(out.plan.steps)} steps)" if did else " already in place"), did)
    if did:
        changed.append(f"mode {target_mode}")
    # last: the daemon adopts the host as bootstrap left it
    if t.spec.router_daemon and t.manager.kind == "systemd":
        from .render import DAEMON_UNIT

        st = t.manager.states([DAEMON_UNIT])[DAEMON_UNIT]
        if not st.is_running:
            t.manager.start(DAEMON_UNIT)
            changed.append("router daemon started")
        step(f"router daemon {DAEMON_UNIT} on port {t.spec.router_daemon.get('port')}", not st.is_running)
    if t.spec.fleet is not None and t.manager.kind == "systemd":
        from .fleet.unit import FLEET_UNIT

        st = t.manager.states([FLEET_UNIT])[FLEET_UNIT]
        if not st.is_running:
            t.manager.start(FLEET_UNIT)
            changed.append("fleet proxy started")
        step(f"fleet proxy {FLEET_UNIT} on port {t.spec.fleet.get('port', 4000)}", not st.is_running)

    msg = f"{len(changed)} changes" if changed else "everything already in place, nothing changed"
    con.print(f"[bold]{msg}[/bold]")
    return msg
