"""llama.cpp's ``llama-server``: one model, or a router of models loaded on demand.

Behaviour is that of the real server (../shared/reference/servers.md):
- single model: listens at once and answers ``/health`` 503 "Loading model" until loaded.
- router (no ``--model``): ``/health`` is always 200, so readiness is the model's status in
  ``GET /models``; ``POST /models/load`` answers at spawn (the caller waits for ``loaded``);
  unload answers at once.  "Sleep" is unloading the model (its child exits, VRAM 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..catalog.model import SleepMode
from ..errors import HostError
from . import http
from .base import Command, Engine, Health, Probe, extra_args

if TYPE_CHECKING:
    from ..catalog.model import Preset
    from ..host.base import Host
    from ..hostfacts import HostFacts
    from ..inventory import HostSpec


def router_model_name(preset: Preset) -> str:
    """Name of the model inside a llama.cpp router: unit_vars.router_model, else what the router
    itself calls a ``--models-dir`` entry (a file's name without .gguf, or a directory's name),
    else the id."""
    if preset.unit_vars.get("router_model"):
        return str(preset.unit_vars["router_model"])
    if preset.model_path:
        name = Path(preset.model_path).name
        return name[: -len(".gguf")] if name.endswith(".gguf") else name
    return preset.id


def model_file(preset: Preset, host: HostSpec) -> str:
    """The model path on the box: a host's ``models_dir`` var re-roots the preset's file name."""
    root = host.vars.get("models_dir")
    if root and preset.model_path:
        return f"{str(root).rstrip('/')}/{Path(preset.model_path).name}"
    return preset.model_path


def parse_router_models(text: str) -> dict[str, dict[str, Any]]:
    """``GET /models`` of a llama.cpp router -> {model id: entry}; aliases map to their entry too.
    ValueError for any other shape (an answer from something that is not a router)."""
    data = http.json_object(text).get("data")
    if not isinstance(data, list):
        raise ValueError(f"'data' is {type(data).__name__}, not a list")
    out: dict[str, dict[str, Any]] = {}
    for e in data:
        if not isinstance(e, dict) or not isinstance(e.get("id"), str):
            raise ValueError(f"a model entry is not an object with a string id: {str(e)[:80]}")
        out[e["id"]] = e
        aliases = e.get("aliases") or []
        for a in aliases if isinstance(aliases, list) else []:
            if isinstance(a, str):
                out.setdefault(a, e)
    return out


def router_status(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "missing"
    st = entry.get("status") or {}
    if isinstance(st, dict):
        if st.get("failed"):
            return "failed"
        return str(st.get("value", "unloaded"))
    return str(st)


def is_router(preset: Preset) -> bool:
    return preset.sleep_mode is SleepMode.ROUTER


def tensor_split_arg(preset: Preset) -> str:
    """``--tensor-split``: the preset's ratios (``3,1``), else an even split over its GPUs."""
    ratios = preset.tensor_split if len(preset.tensor_split) == preset.gpus else (1.0,) * preset.gpus
    return ",".join(f"{r:g}" for r in ratios)


class LlamaCpp(Engine):
    name = "llamacpp"
    sim_flavor = "llamacpp"

    def command(self, preset: Preset, host: HostSpec, facts: HostFacts, bind: str) -> Command:
        uv = {**host.vars, **preset.unit_vars}
        argv = [str(uv.get("llama_server_bin", "llama-server")), "--host", bind, "--port", str(preset.port)]
        if is_router(preset):
            models_dir = str(uv.get("models_dir") or (str(Path(preset.model_path).parent) if preset.model_path else ""))
            if uv.get("models_preset"):
                argv += ["--models-preset", str(uv["models_preset"])]
            if models_dir:
                argv += ["--models-dir", models_dir]
            argv += ["--models-max", str(uv.get("models_max", 1))]
            if not uv.get("autoload", False):
                argv.append("--no-models-autoload")
        else:
            argv += ["--model", model_file(preset, host), "--alias", preset.served_model]
        if preset.context_size:
            argv += ["--ctx-size", str(preset.context_size)]
        if "n_gpu_layers" in uv:
            argv += ["--n-gpu-layers", str(uv["n_gpu_layers"])]
        if "parallel" in uv:
            argv += ["--parallel", str(uv["parallel"])]
        if preset.gpus > 1:  # its GPUs are the visible ones, in order: the first holds the small tensors
            argv += ["--tensor-split", tensor_split_arg(preset), "--main-gpu", "0"]
        argv += extra_args(preset, host)
        # pinned host buffers can hang the NVIDIA driver and freeze the host; presence disables them
        return Command(tuple(argv), (("GGML_CUDA_NO_PINNED", "1"),))

    def stand_in_args(self, preset: Preset, peers: tuple[Preset, ...]) -> Command:
        if is_router(preset):
            argv = ["--models-max", str(preset.unit_vars.get("models_max", 1)), "--no-models-autoload"]
            for p in peers or (preset,):
                argv += ["--sim-model", f"{router_model_name(p)}={p.vram_mb}"]
        else:
            argv = ["--model", preset.model_path or preset.id, "--alias", preset.served_model, "--vram-mb", str(preset.vram_mb)]
        if preset.gpus > 1:
            argv += ["--tensor-split", tensor_split_arg(preset)]
        return Command(tuple(argv), (("GGML_CUDA_NO_PINNED", "1"),))

    def upstream_name(self, preset: Preset) -> str:
        """A router calls its model by its models-dir entry; llama-server by its ``--alias``."""
        return router_model_name(preset) if is_router(preset) else preset.served_model

    def probe(self, host: Host, preset: Preset, timeout: float) -> Probe:
        if not is_router(preset):
            return http.health_probe(host, preset, timeout)
        a = http.get(host, preset.port, "/models", timeout)
        if a.refused:
            return Probe(Health.DOWN, detail=a.text)
        if a.status != 200:
            return Probe(Health.BAD, detail=a.describe("GET /models"))
        name = router_model_name(preset)
        try:
            st = router_status(parse_router_models(a.text).get(name))
        except ValueError as exc:
            return Probe(Health.BAD, detail=f"GET /models: unexpected answer: {exc}")
        if st in ("loaded", "sleeping"):  # sleeping: idle-asleep child (--sleep-idle-seconds), wakes on a request
            return Probe(Health.OK, router_status=st)
        if st == "loading":
            return Probe(Health.LOADING, router_status=st)
        if st in ("unloaded", "downloaded"):
            return Probe(Health.OK, sleeping=True, router_status=st)
        return Probe(Health.BAD, router_status=st, detail=f"router reports model {name!r} as {st}")

    def _router_post(self, host: Host, preset: Preset, path: str) -> http.Answer:
        a = http.post(host, preset.port, path, json_body={"model": router_model_name(preset)}, timeout=http.sleep_timeout(host, preset))
        if a.status <= 0:
            raise HostError(host.name, f"{preset.id}: {a.describe('POST ' + path)}")
        return a

    def sleep(self, host: Host, preset: Preset, level: int) -> None:
        if not is_router(preset):
            super().sleep(host, preset, level)
        a = self._router_post(host, preset, "/models/unload")
        if a.status == 400 and "not running" in a.text:
            return  # already unloaded: converged
        if a.status >= 400:
            raise HostError(host.name, f"{preset.id}: {a.describe('POST /models/unload')}")

    def wake(self, host: Host, preset: Preset, level: int) -> None:
        if not is_router(preset):
            super().wake(host, preset, level)
        a = self._router_post(host, preset, "/models/load")
        if a.status == 400 and "already running" in a.text:
            return
        if a.status >= 400:
            raise HostError(host.name, f"{preset.id}: {a.describe('POST /models/load')}")


ENGINE = LlamaCpp()
