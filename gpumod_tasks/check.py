"""The value every doctor check returns: a name, ok or not, a message, and the fix to run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    message: str
    fix: str = ""
