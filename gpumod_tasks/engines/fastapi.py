"""Custom servers (``driver: fastapi``): a command of the preset's own, with vLLM's sleep routes.

The listen address: gpumod fills ``{host}`` in ``unit_vars.command`` with the preset's bind address
(``unit_vars.bind``, default 127.0.0.1), as it fills ``{port}``.  A command without ``{host}`` gets
``--host ADDR`` appended (the uvicorn / FastAPI convention); a server that takes its address another
way says so with ``unit_vars.host_flag`` (e.g. ``--bind``), or ``""`` when it binds loopback by
itself.  A literal ``--host`` in the command is refused: the address comes from ``bind`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import RenderError
from .base import Command
from .vllm import SleepRoutes, Vllm

if TYPE_CHECKING:
    from ..catalog.model import Preset
    from ..hostfacts import HostFacts
    from ..inventory import HostSpec


def fill(value: Any, preset: Preset, bind: str) -> str:
    return (str(value).replace("{port}", str(preset.port)).replace("{id}", preset.id)
            .replace("{model}", preset.model_id or preset.model_path).replace("{host}", bind))


class FastApi(SleepRoutes):
    name = "fastapi"
    sim_flavor = "fastapi"

    def command(self, preset: Preset, host: HostSpec, facts: HostFacts, bind: str) -> Command:
        uv = {**host.vars, **preset.unit_vars}
        cmd = uv.get("command")
        if not isinstance(cmd, list) or not cmd:
            raise RenderError(f"{preset.file}: unit_vars.command must be a non-empty list for driver fastapi")
        flag = str(uv.get("host_flag", "--host"))
        words = [str(w) for w in cmd]
        for i, w in enumerate(words[1:], 1):
            nxt = words[i + 1] if i + 1 < len(words) and "=" not in w else ""
            if w.split("=", 1)[0] in {"--host", flag} - {""} and "{host}" not in w + nxt:
                raise RenderError(f"{preset.file}: unit_vars.command sets {w!r}: write {{host}} for the listen address "
                                  f"(filled from unit_vars.bind, default 127.0.0.1)")
        argv = [fill(a, preset, bind) for a in cmd]
        if flag and not any("{host}" in str(a) for a in cmd):
            argv += [flag, bind]
        venv = uv.get("venv")
        if venv and argv[0] in ("python", "python3"):
            argv[0] = f"{venv}/bin/python"
        elif venv and "/" not in argv[0]:
            argv[0] = f"{venv}/bin/{argv[0]}"
        return Command(tuple(argv))

    def stand_in_args(self, preset: Preset, peers: tuple[Preset, ...]) -> Command:
        # the stand-in is vLLM's, without vLLM's dev-mode variable
        vllm = Vllm().stand_in_args(preset, peers)
        return Command(vllm.argv)


ENGINE = FastApi()
