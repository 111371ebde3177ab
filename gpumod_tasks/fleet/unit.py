"""``gpumod-fleet.service``: ``fleet.serve --as-host NAME`` as a unit on the host that has ``fleet:``."""

from __future__ import annotations

from pathlib import Path

from ..interpreter import this_python
from ..inventory import HostSpec

FLEET_UNIT = "gpumod-fleet.service"


def render_fleet_unit(host: HostSpec, project_root: str, *, local: bool) -> str:
    from ..render import jinja_env

    python = this_python() if local else str(host.vars.get("gpumod_python", "python3"))
    argv = (python, "-m", "gpumod_tasks.program", "fleet.serve", "--as-host", host.name)
    env: list[tuple[str, str]] = []
    home = project_root if local else host.vars.get("gpumod_home")
    if home:
        env.append(("GPUMOD_HOME", str(home)))
    if local:
        from ..paths import inventory_path

        env.append(("PYTHONPATH", str(Path(__file__).resolve().parent.parent.parent)))
        env.append(("GPUMOD_INVENTORY", str(Path(inventory_path(project_root)).resolve())))
    return jinja_env(project_root).get_template("systemd/gpumod-fleet.service.j2").render(
        host=host, argv=argv, env=env, user_scope=host.scope == "user")
