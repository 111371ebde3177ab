"""gpumod's errors: one base class, subclasses named after what happened.

    GpumodError
    ├── CatalogError            presets/modes/inventory invalid (every problem, file:line:col field)
    ├── UnknownName (LookupError)   unknown mode, service or host
    ├── StateFileInvalid (ValueError)   a state file gpumod wrote has the wrong shape (names the file)
    ├── SettingInvalid (ValueError)     a setting from a flag, the environment or a file is unusable
    ├── HostError               a command/file/HTTP operation on a host failed
    │   ├── CommandFailed       non-accepted exit code (carries the CommandResult)
    │   └── HostUnreachable     SSH connection could not be made / was lost
    ├── GpuProbeError           no GPU backend answered
    ├── PlanRefused             the target does not fit, or a preflight refuses
    ├── LockBusy                another switch holds the host lock
    ├── SwitchFailed            a step failed mid-switch (carries the state it left)
    └── RenderError             a unit cannot be rendered safely (unsafe docker flag, ...)

Exactly one place (``program.Gpumod``) turns these into a red message and an exit code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .result import CommandResult


class GpumodError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def details(self) -> list[str]:
        """Extra lines shown under the message."""
        return []


@dataclass(frozen=True)
class Problem:
    """One validation problem, pointing at a file position and a field."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class CatalogError(GpumodError, ValueError):
    exit_code = 2

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column, p.field))
        n = len(self.problems)
        super().__init__(f"catalog invalid: {n} problem{'s' if n != 1 else ''}")

    def details(self) -> list[str]:
        return [str(p) for p in self.problems]


class UnknownName(GpumodError, LookupError):
    exit_code = 2

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        shown = ", ".join(self.known) if self.known else "(none)"
        super().__init__(f"unknown {kind} {name!r}; known: {shown}")


class StateFileInvalid(GpumodError, ValueError):
    """A state file (mode record, switch history) that cannot be used as it is."""

    exit_code = 2

    def __init__(self, file: str, message: str):
        self.file, self.reason = file, message
        super().__init__(f"{file}: {message}")


class SettingInvalid(GpumodError, ValueError):
    exit_code = 2


class HostError(GpumodError):
    def __init__(self, host: str, message: str):
        self.host = host
        super().__init__(f"[{host}] {message}")


class CommandFailed(HostError):
    def __init__(self, result: CommandResult, what: str = ""):
        self.result = result
        label = what or " ".join(result.argv)[:200]
        super().__init__(result.host, f"{label}: exit code {result.exit_code}")

    def details(self) -> list[str]:
        out = []
        if self.result.stderr.strip():
            out.append("stderr: " + self.result.stderr.strip()[-800:])
        if self.result.stdout.strip():
            out.append("stdout: " + self.result.stdout.strip()[-400:])
        return out


class HostUnreachable(HostError):
    pass


class GpuProbeError(GpumodError):
    pass


class PlanRefused(GpumodError):
    def __init__(self, message: str, lines: list[str] | None = None):
        self.lines = lines or []
        super().__init__(message)

    def details(self) -> list[str]:
        return self.lines


class LockBusy(GpumodError):
    exit_code = 3


class SwitchFailed(GpumodError):
    """A switch step failed. ``state_lines`` say exactly what runs, sleeps and is stopped now."""

    def __init__(self, message: str, state_lines: list[str], payload: dict[str, Any] | None = None):
        self.state_lines = state_lines
        self.payload = payload or {}
        super().__init__(message)

    def details(self) -> list[str]:
        return self.state_lines


class RenderError(GpumodError, ValueError):
    pass
