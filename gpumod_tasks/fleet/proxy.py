"""``fleet.serve``: LiteLLM's proxy as a child process, and the loop that keeps its config truthful.

The proxy runs in its own interpreter (``fleet.python``, default: this one): litellm[proxy] pins
many packages, so it can live in a venv of its own, and gpumod's process never imports it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..catalog.model import Catalog
from .config import HOOK_MODULE, deployments, dump, litellm_config
from .observe import fleet_states
from .settings import EXTRA_HINT, FleetError, FleetSettings, read_secret

HOOK_SOURCE = Path(__file__).with_name(f"{HOOK_MODULE}.py")


def require_litellm(python: str) -> None:
    """One line and exit 2 when ``python`` cannot import LiteLLM's proxy."""
    probe = "import importlib.util as u, sys; sys.exit(0 if u.find_spec('litellm') and u.find_spec('litellm.proxy') else 3)"
    try:
        rc = subprocess.run([python, "-c", probe], capture_output=True, timeout=60, check=False).returncode
    except (OSError, subprocess.TimeoutExpired):
        rc = 127
    if rc != 0:
        raise FleetError(f"LiteLLM's proxy is not installed for {python}: {EXTRA_HINT} "
                         "(or point fleet.python / $GPUMOD_FLEET_PYTHON at an interpreter that has litellm[proxy])")


def box_keys(fs: FleetSettings) -> dict[str, str]:
    return {b.name: read_secret(b.key_file, f"API key of {b.name}'s router daemon") for b in fs.boxes if b.key_file}


def atomic_write(path: str, text: str) -> bool:
    """Write when the text changed (a rename, so the proxy never reads half a file)."""
    p = Path(path)
    try:
        if p.read_text() == text:
            return False
    except OSError:
        pass
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, p)
    return True


@dataclass
class Written:
    path: str
    changed: bool
    states: dict[str, dict[str, str] | None]
    orders: dict[str, int] = field(default_factory=dict)  # deployment id -> order


def write_config(fs: FleetSettings, cat: Catalog, keys: dict[str, str], client: httpx.Client) -> Written:
    """Observe every box once and write the config (and the reload hook beside it)."""
    seen = fleet_states(fs.boxes, keys, client)
    deps = deployments(fs, cat, seen)
    text = dump(litellm_config(fs, deps))
    hook = Path(fs.config).with_name(HOOK_SOURCE.name)
    atomic_write(str(hook), HOOK_SOURCE.read_text())
    changed = atomic_write(fs.config, text)
    return Written(fs.config, changed, seen, {d.id: d.order for d in deps})


def proxy_argv(fs: FleetSettings) -> list[str]:
    return [fs.python, "-c", "import sys; from litellm.proxy.proxy_cli import run_server; sys.exit(run_server())",
            "--config", fs.config, "--host", fs.bind, "--port", str(fs.port), "--num_workers", "1"]


def proxy_env(fs: FleetSettings, master_key: str, keys: dict[str, str]) -> dict[str, str]:
    """Secrets reach the proxy through its environment only: never argv, never the config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUMOD_FLEET_KEY_")}
    env.update({"LITELLM_MASTER_KEY": master_key, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                "DISABLE_SCHEMA_UPDATE": "True", "GPUMOD_FLEET_CONFIG": fs.config, "PYTHONUNBUFFERED": "1"})
    env.pop("DATABASE_URL", None)  # the fleet's proxy is database-free by design
    for b in fs.boxes:
        if b.name in keys:
            env[b.key_env] = keys[b.name]
    return env


def serve(fs: FleetSettings, cat_loader: Callable[[], Catalog], say: Callable[[str], None], *,
          ready_timeout_s: float = 120.0) -> int:
    """Run the proxy and the sync loop until the proxy exits or a signal arrives; the exit code."""
    require_litellm(fs.python)
    if not fs.master_key_file:
        raise FleetError(f"fleet on {fs.host}: no master_key_file: the proxy would take requests from anyone")
    master = read_secret(fs.master_key_file, "fleet master key")
    keys = box_keys(fs)
    for s in fs.skipped:
        say(f"left out: {s}")
    client = httpx.Client(trust_env=False)
    w = write_config(fs, cat_loader(), keys, client)
    say(f"config {w.path}: {len(w.orders)} deployments over {len(fs.boxes)} boxes")
    proc = subprocess.Popen(proxy_argv(fs), env=proxy_env(fs, master, keys), cwd=str(Path(fs.config).parent),
                            start_new_session=True)
    stop = {"sig": 0}

    def on_signal(signum: int, frame: object) -> None:
        stop["sig"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        deadline = time.monotonic() + ready_timeout_s
        ready = False
        while proc.poll() is None and not stop["sig"]:
            if not ready:
                try:
                    ready = client.get(f"{fs.url}/health/liveliness", timeout=1).status_code == 200
                except httpx.HTTPError:
                    ready = False
                if ready:
                    say(f"LiteLLM proxy on {fs.bind}:{fs.port} (pid {proc.pid}); syncing every {fs.sync_interval_s:g} s")
                elif time.monotonic() > deadline:
                    say(f"the proxy did not answer within {ready_timeout_s:g} s")
                    return 1
                else:
                    time.sleep(0.2)
                    continue
            t0 = time.monotonic()
            try:
                w = write_config(fs, cat_loader(), keys, client)
                if w.changed:
                    say("routing changed: " + ", ".join(f"{i}={o}" for i, o in sorted(w.orders.items())))
            except Exception as exc:  # noqa: BLE001 - a bad catalog edit must not take the front door down
                say(f"sync failed (routing unchanged): {exc}")
            time.sleep(max(0.0, fs.sync_interval_s - (time.monotonic() - t0)))
        return 0 if stop["sig"] else (proc.returncode or 0)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        client.close()

