"""Many facts in one round trip (pyinfra-style): each fact's command runs in turn inside one shell
script whose output is split back per fact, with each command's exit code.  Over SSH this turns
the observation of a host into a single command; the parsers stay the same pure functions."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..host.base import Host, shell_join


@dataclass(frozen=True)
class FactOutput:
    exit_code: int
    stdout: str


def batch_script(facts: Mapping[str, Sequence[str]], mark: str) -> str:
    parts = []
    for name, argv in facts.items():
        parts.append(f"printf '\\n{mark} %s\\n' {name}; {shell_join(argv)} 2>/dev/null </dev/null; printf '\\n{mark}-rc %s\\n' $?")
    return "; ".join(parts)


def parse_batch(text: str, names: Sequence[str], mark: str) -> dict[str, FactOutput]:
    """Pure: split a batch's output back into each fact's stdout and exit code."""
    out: dict[str, FactOutput] = {}
    for chunk in text.split(f"\n{mark} ")[1:]:
        name, _, rest = chunk.partition("\n")
        body, sep, tail = rest.rpartition(f"\n{mark}-rc ")
        if not sep:
            continue
        rc = tail.strip().split()[0] if tail.strip() else "255"
        out[name] = FactOutput(int(rc) if rc.lstrip("-").isdigit() else 255, body)
    for n in names:
        out.setdefault(n, FactOutput(255, ""))
    return out


def run_batch(host: Host, facts: Mapping[str, Sequence[str]]) -> dict[str, FactOutput]:
    mark = f"@@gpumod-fact-{os.urandom(6).hex()}"
    r = host.run(["sh", "-c", batch_script(facts, mark)], ok=range(256), what="facts")
    return parse_batch(r.stdout, list(facts), mark)
