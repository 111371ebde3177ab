"""Plan steps: small frozen values that describe themselves, so ``--dry-run`` is printing the plan.

Each kind says whether running it twice changes nothing (``idempotent``); the executor reports
changed / unchanged / failed per step and never decides anything a step does not say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class Step:
    kind: ClassVar[str] = "step"
    #: False: acts again on every run (a daemon-reload); True: a second run reports "unchanged"
    idempotent: ClassVar[bool] = True

    def describe(self) -> str:  # pragma: no cover - overridden
        return self.kind


@dataclass(frozen=True)
class InstallUnit(Step):
    """Write a unit file (or supervisor runner script) that is missing or differs from the
    rendered catalog. ``body`` is exactly what gets written."""

    unit: str
    reason: str
    body: str = field(repr=False, compare=False)
    digest: str = ""
    spec: object = field(default=None, repr=False, compare=False)
    kind: ClassVar[str] = "install-unit"

    def describe(self) -> str:
        return f"install unit {self.unit} ({self.reason})"


@dataclass(frozen=True)
class DaemonReload(Step):
    """``systemctl daemon-reload`` after unit files changed (systemd only)."""

    units: tuple[str, ...] = ()
    kind: ClassVar[str] = "daemon-reload"
    idempotent: ClassVar[bool] = False  # systemd reloads every time it is asked

    def describe(self) -> str:
        return f"systemctl daemon-reload (unit files changed: {', '.join(self.units)})"


@dataclass(frozen=True)
class ResetFailed(Step):
    """Clear systemd's failed state of a unit before starting it again."""

    unit: str
    kind: ClassVar[str] = "reset-failed"

    def describe(self) -> str:
        return f"systemctl reset-failed {self.unit} (it failed before)"


@dataclass(frozen=True)
class Stop(Step):
    service: str
    reason: str
    frees_mb: int = 0
    unit: str = ""
    kind: ClassVar[str] = "stop"

    def describe(self) -> str:
        return f"stop {self.service} ({self.reason})"


@dataclass(frozen=True)
class RouterUnload(Step):
    """Unload one model from a llama.cpp router that stays up (its child process exits)."""

    service: str
    reason: str
    frees_mb: int = 0
    kind: ClassVar[str] = "router-unload"

    def describe(self) -> str:
        return f"unload {self.service} from its llama.cpp router ({self.reason})"


@dataclass(frozen=True)
class Sleep(Step):
    service: str
    level: int  # vLLM levels 1 or 2
    reason: str
    frees_mb: int = 0
    note: str = ""
    kind: ClassVar[str] = "sleep"

    def describe(self) -> str:
        return f"sleep {self.service} L{self.level} ({self.reason})" + (f" [{self.note}]" if self.note else "")


@dataclass(frozen=True)
class WaitRelease(Step):
    """Poll the GPU until used memory is down to the figure. ``releasing``: the exiting processes
    whose memory is awaited (a crashed stop's: "pid N of big (9000 MB)"), named in the plan and in
    the error when it is still held after the release timeout."""

    expected_used_mb: int
    tolerance_mb: int
    releasing: tuple[str, ...] = ()
    #: on a box with several GPUs: (GPU index, expected used MB) for every GPU involved (the GPUs
    #: the leaving services held); the wait is met when each of them is down to its figure.
    #: Empty on a one-GPU box: ``expected_used_mb`` is that GPU's figure.
    per_gpu: tuple[tuple[int, int], ...] = ()
    kind: ClassVar[str] = "wait-release"

    def describe(self) -> str:
        what = f"releasing: {', '.join(self.releasing)}; " if self.releasing else ""
        if self.per_gpu:
            each = ", ".join(f"GPU{i} used <= {mb} MB" for i, mb in self.per_gpu)
            return f"{what}wait until {each} (+{self.tolerance_mb} MB tolerance each)"
        return f"{what}wait until GPU used <= {self.expected_used_mb} MB (+{self.tolerance_mb} MB tolerance)"


@dataclass(frozen=True)
class Quiesce(Step):
    """After a heavy stop, loads wait ``seconds``; the window is recorded so a later lone
    ``service.start`` is refused until it has passed. Nothing waits when nothing loads next."""

    seconds: float
    freed_mb: int
    wait: bool = True
    kind: ClassVar[str] = "quiesce"

    def describe(self) -> str:
        verb = "quiesce" if self.wait else "start a quiesce window of"
        return f"{verb} {self.seconds:g}s after freeing {self.freed_mb} MB"


@dataclass(frozen=True)
class Wake(Step):
    service: str
    level: int  # 1 or 2
    kind: ClassVar[str] = "wake"

    def describe(self) -> str:
        how = {1: "L1: wake_up", 2: "L2: weights, reload_weights, kv_cache"}.get(self.level, f"L{self.level}")
        return f"wake {self.service} ({how})"


@dataclass(frozen=True)
class Start(Step):
    """Start a service's unit, then wait for its health gate. For a llama.cpp router unit the gate
    is "listening"; the model is loaded by the ``RouterLoad`` step that follows."""

    service: str
    reason: str
    ram_needed_mb: int = 0
    relaunch: bool = False  # drift recovery: it should have been running
    restart: bool = False  # the second half of a restart (its stop came earlier in the plan)
    unit: str = ""
    router: bool = False
    kind: ClassVar[str] = "start"

    def describe(self) -> str:
        what = f"router unit {self.unit} for {self.service}" if self.router else self.service
        ram = f"; preflight needs {self.ram_needed_mb} MB RAM" if self.ram_needed_mb else ""
        return f"start {what} ({self.reason}{ram})"


@dataclass(frozen=True)
class AwaitHealthy(Step):
    """A service whose process already runs but is not ready yet: wait for its health gate."""

    service: str
    reason: str = "already starting"
    kind: ClassVar[str] = "await-healthy"

    def describe(self) -> str:
        return f"wait for {self.service} to become healthy ({self.reason})"


@dataclass(frozen=True)
class RouterLoad(Step):
    """``POST /models/load`` on a llama.cpp router, then wait until the model is ``loaded``."""

    service: str
    reason: str = ""
    kind: ClassVar[str] = "router-load"

    def describe(self) -> str:
        return f"load {self.service} into its llama.cpp router" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class Record(Step):
    """Write the recorded mode and sleep levels on the target (``mode`` None: keep the recorded one)."""

    mode: str | None
    sleep_levels: tuple[tuple[str, int], ...] = ()
    kind: ClassVar[str] = "record"

    def describe(self) -> str:
        return f"record mode {self.mode}" if self.mode else "record sleep levels"


#: steps that free VRAM, and the key the switch summary files them under
LEAVING = (Stop, RouterUnload, Sleep)
ARRIVING = (Start, RouterLoad, Wake, AwaitHealthy)
