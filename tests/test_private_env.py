"""A preset's env reaches its process through a private file (0600 in a 0700 directory), never
through the world-readable supervisor script or unit."""

from __future__ import annotations

import json
import stat
import sys
import time
from pathlib import Path

from gpumod_tasks.catalog.model import Driver, Preset
from gpumod_tasks.host.local import LocalHost
from gpumod_tasks.inventory import HostSpec
from gpumod_tasks.render import HostFacts, real_exec
from gpumod_tasks.service_manager import Supervisor


def test_supervisor_unit_sources_its_private_env_file(tmp_path):
    out = tmp_path / "seen.json"
    env = {"HF_TOKEN": "hf_secret_value_0123456789", "QUOTED": "it's \"q\" $HOME %d \\x"}
    code = f"import os, json; json.dump({{k: os.environ.get(k) for k in {sorted(env)!r}}}, open({str(out)!r}, 'w'))"
    p = Preset(id="echo", name="echo", driver=Driver.FASTAPI, port=1, vram_mb=1, env=tuple(env.items()),
               unit_vars={"command": [sys.executable, "-c", code], "host_flag": ""})
    state = tmp_path / "state"
    spec = real_exec(p, HostSpec(name="t"), HostFacts(gpu_total_mb=1, sim=False, state_dir=str(state)))
    spec = spec.__class__(argv=spec.argv, env=spec.env, private_env=spec.private_env, env_file=spec.env_file)  # no preflight here
    host = LocalHost(HostSpec(name="t"))
    sup = Supervisor(host, str(state))
    try:
        sup.install(p.unit, spec)
        script = Path(sup._paths(p.unit)["spec"]).read_text()
        assert "hf_secret" not in script and spec.env_file in script
        f = Path(spec.env_file)
        assert stat.S_IMODE(f.stat().st_mode) == 0o600 and stat.S_IMODE(f.parent.stat().st_mode) == 0o700
        sup.start(p.unit)
        deadline = time.monotonic() + 10
        while not (out.exists() and out.read_text().endswith("}")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads(out.read_text()) == env
    finally:
        sup.stop(p.unit)
        host.close()
