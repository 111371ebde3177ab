"""Typed values for the catalog: presets (one service each) and modes (bundles of services)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..engines.caps import DEFAULT_RESIDUAL_MB, DEFAULT_TP_RESIDUAL_MB_PER_GPU
from ..errors import UnknownName


class Driver(str, Enum):
    VLLM = "vllm"
    LLAMACPP = "llamacpp"
    FASTAPI = "fastapi"
    DOCKER = "docker"


class SleepMode(str, Enum):
    NONE = "none"
    L1 = "l1"
    L2 = "l2"
    ROUTER = "router"

    @property
    def level(self) -> int:
        return {"l1": 1, "l2": 2}.get(self.value, 0)


# VRAM a sleeping service still holds when its preset does not say: each engine's row in
# engines/caps.py (a leaf, so the catalog loads no engine code)
DEFAULT_SLEEP_VRAM_MB = {d: DEFAULT_RESIDUAL_MB[d.value] for d in Driver}


@dataclass(frozen=True)
class DockerSpec:
    image: str
    ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    network: str = ""
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Preset:
    id: str
    name: str
    driver: Driver
    port: int
    vram_mb: int
    category: str = ""
    description: str = ""
    model_id: str = ""
    model_path: str = ""
    model_size_mb: int = 0
    context_size: int = 0
    kv_cache_per_1k: float = 0.0
    health_endpoint: str = "/health"
    startup_timeout: int = 300
    supports_sleep: bool = False
    sleep_mode: SleepMode = SleepMode.NONE
    sleep_vram_mb: int | None = None
    depends_on: tuple[str, ...] = ()
    unit_template: str = ""
    unit_vars: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    env: tuple[tuple[str, str], ...] = ()
    compat: tuple[tuple[str, str], ...] = ()
    docker: DockerSpec | None = None
    sim: dict[str, float] = field(default_factory=dict, hash=False, compare=False)
    router: str = ""  # llama.cpp: presets naming the same router are models of one router unit
    gpus: int = 1  # how many GPUs it runs on (vLLM: its tensor-parallel size)
    gpu_pin: tuple[str, ...] = ()  # GPUs it must run on: indices ("1") or UUIDs; () = any
    tensor_split: tuple[float, ...] = ()  # llama.cpp: the share of each of its GPUs (() = even)
    file: str = ""

    @property
    def unit(self) -> str:
        return f"gpumod-router-{self.router}.service" if self.router else f"gpumod-{self.id}.service"

    @property
    def can_sleep(self) -> bool:
        return self.supports_sleep and self.sleep_mode is not SleepMode.NONE

    @property
    def residual_mb(self) -> int:
        """VRAM still held while asleep."""
        if self.sleep_vram_mb is not None:
            return self.sleep_vram_mb
        if self.gpus > 1 and self.driver.value in DEFAULT_TP_RESIDUAL_MB_PER_GPU:
            return min(self.vram_mb, DEFAULT_TP_RESIDUAL_MB_PER_GPU[self.driver.value] * self.gpus)
        return min(self.vram_mb, DEFAULT_SLEEP_VRAM_MB[self.driver])

    def per_gpu_mb(self, mb: int) -> tuple[int, ...]:
        """A total of this service's MB split over its GPUs, in its GPU order: by ``tensor_split``
        ratios, else evenly (vLLM tensor parallel); the rounding remainder goes to the first."""
        n = max(1, self.gpus)
        ratios = self.tensor_split if len(self.tensor_split) == n and sum(self.tensor_split) > 0 else (1.0,) * n
        shares = [int(mb * r / sum(ratios)) for r in ratios]
        shares[0] += mb - sum(shares)
        return tuple(shares)

    @property
    def served_model(self) -> str:
        """The name clients put in a request's ``model`` field."""
        return self.unit_vars.get("served_model_name") or self.id


@dataclass(frozen=True)
class ModeService:
    id: str
    sleep_on_idle: int | None = None  # seconds without requests before the router sleeps it


@dataclass(frozen=True)
class Mode:
    id: str
    name: str
    description: str = ""
    services: tuple[ModeService, ...] = ()
    file: str = ""

    @property
    def service_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.services)


@dataclass(frozen=True)
class Catalog:
    presets: dict[str, Preset]
    modes: dict[str, Mode]
    root: str = ""

    def unit_peers(self, preset: Preset) -> tuple[Preset, ...]:
        """The presets served by the same unit (a shared llama.cpp router), this one included,
        sorted by id; the first is the one the unit is rendered from."""
        if not preset.router:
            return (preset,)
        return tuple(sorted((p for p in self.presets.values() if p.router == preset.router), key=lambda p: p.id))

    def preset(self, service_id: str) -> Preset:
        try:
            return self.presets[service_id]
        except KeyError:
            raise UnknownName("service", service_id, list(self.presets)) from None

    def mode(self, mode_id: str) -> Mode:
        try:
            return self.modes[mode_id]
        except KeyError:
            raise UnknownName("mode", mode_id, list(self.modes)) from None

    def mode_vram(self, mode: Mode) -> int:
        return sum(self.presets[s].vram_mb for s in mode.service_ids)


@dataclass(frozen=True)
class GpuAssignment:
    """The GPUs a service's unit is rendered for: indices in the service's GPU order, and each one's
    UUID where the box reported it ("" when not)."""

    indices: tuple[int, ...]
    uuids: tuple[str, ...] = ()
    totals_mb: tuple[int, ...] = ()  # each GPU's total (vLLM's --gpu-memory-utilization is a fraction of it)

    @property
    def visible_devices(self) -> str:
        """``CUDA_VISIBLE_DEVICES``: the UUIDs when every one is known (stable across a reboot that
        reorders GPUs), else the indices (with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``)."""
        if self.uuids and len(self.uuids) == len(self.indices) and all(self.uuids):
            return ",".join(self.uuids)
        return ",".join(map(str, self.indices))
