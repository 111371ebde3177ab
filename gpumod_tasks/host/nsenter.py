"""A host inside a namespace of this machine (a container or a private systemd), reached with nsenter.

Commands run as ``nsenter -t PID -m -p -- argv``; files go through commands too, because the
namespace has mounts of its own (its ``/run`` is not this machine's).  The network is shared, so
HTTP goes straight to 127.0.0.1.  ``nsenter`` in the inventory is the namespace init's PID or a
file holding it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import HostUnreachable
from .base import WRITE_SCRIPT, CommandResult, Host
from .local import LocalHost


class NsenterHost(LocalHost):
    is_this_machine = False  # its /run and PID numbers are the namespace's own
    colocated = True  # the disk, this interpreter and the kernel's GPUs are shared

    @property
    def pid(self) -> str:
        ref = self.spec.nsenter
        if ref.isdigit():
            pid = ref
        else:
            try:
                with open(os.path.expanduser(ref)) as fh:
                    pid = fh.read().strip()
            except OSError as exc:
                raise HostUnreachable(self.name, f"cannot read the namespace pid file {ref}: {exc}") from exc
        if not pid.isdigit() or not os.path.exists(f"/proc/{pid}"):
            raise HostUnreachable(self.name, f"no namespace process {pid or '?'} (from nsenter: {ref})")
        return pid

    def _run(self, argv: Sequence[str], *, input: str | None, timeout: float | None, env: dict[str, str] | None) -> CommandResult:
        r = super()._run(["nsenter", "-t", self.pid, "-m", "-p", "--", *argv], input=input, timeout=timeout, env=env)
        return CommandResult(r.host, tuple(argv), r.exit_code, r.stdout, r.stderr)

    def read_file(self, path: str, *, sudo: bool = False) -> str | None:
        return self._read_by_command(path)

    def write_file(self, path: str, content: str, *, mode: int = 0o644, sudo: bool = False) -> bool:
        p = self.expand(path)
        if self.read_file(p) == content:
            return False
        Host.run(self, ["sh", "-c", WRITE_SCRIPT, "sh", p, f"{mode:o}"], input=content)
        return True

    def remove_file(self, path: str, *, sudo: bool = False) -> bool:
        return Host.remove_file(self, path, sudo=sudo)

    def makedirs(self, path: str, *, sudo: bool = False) -> None:
        Host.makedirs(self, path, sudo=sudo)
