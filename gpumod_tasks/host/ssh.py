"""A remote box over SSH with Fabric.

Imported only when a remote host is targeted (Fabric and paramiko cost a few hundred ms to
import).  One ``Connection`` is held per run; HTTP to services that bind 127.0.0.1 on the box goes
through local port-forwards opened once per remote port and reused.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Sequence
from typing import Any

from ..errors import HostError, HostUnreachable
from .base import CommandResult, Host, shell_join


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SshHost(Host):
    def __init__(self, spec: Any, config: Any = None, connect_kwargs: dict[str, Any] | None = None):
        super().__init__(spec)
        from fabric import Config, Connection
        from paramiko.client import RejectPolicy

        cfg = config if config is not None else Config()
        kwargs = dict(connect_kwargs or {})
        if spec.identity:
            kwargs.setdefault("key_filename", [spec.identity])
        self.conn = Connection(
            host=spec.ssh_host,
            user=spec.ssh_user or None,
            port=spec.ssh_port,
            config=cfg,
            connect_kwargs=kwargs,
        )
        # Unknown host keys are refused: never auto-add, never silently skip checking.
        self.conn.client.set_missing_host_key_policy(RejectPolicy())
        self._forwards: dict[int, int] = {}
        self._stack = contextlib.ExitStack()
        self._fwd_lock = threading.Lock()
        self._home: str | None = None
        self._root: bool | None = None

    def _ensure_open(self) -> None:
        if self.conn.is_connected:
            return
        import paramiko

        try:
            self.conn.open()
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc) or "Unknown server" in str(exc):
                port = f" -p {self.spec.ssh_port}" if self.spec.ssh_port else ""
                raise HostUnreachable(
                    self.name,
                    f"host key of {self.spec.ssh_host} is not known; refusing to connect. "
                    f"Trust it first with: ssh-keyscan{port} {self.spec.ssh_host} >> ~/.ssh/known_hosts "
                    f"(after checking its fingerprint)",
                ) from exc
            raise HostUnreachable(self.name, f"SSH connection failed: {exc}") from exc
        except OSError as exc:
            raise HostUnreachable(self.name, f"cannot reach {self.spec.ssh_host}: {exc}") from exc

    def _run(self, argv: Sequence[str], *, input: str | None, timeout: float | None, env: dict[str, str] | None) -> CommandResult:
        import io

        self._ensure_open()
        cmd = shell_join(argv)
        if env:
            cmd = shell_join(["env", *[f"{k}={v}" for k, v in env.items()]]) + " " + cmd
        try:
            r = self.conn.run(
                cmd,
                hide=True,
                warn=True,
                in_stream=io.StringIO(input) if input is not None else False,
                timeout=timeout,
            )
        except Exception as exc:  # paramiko/socket errors mid-command: the connection is gone
            if type(exc).__name__ == "CommandTimedOut":
                raise HostError(self.name, f"command timed out after {timeout}s: {cmd[:200]}") from exc
            raise HostUnreachable(self.name, f"connection lost while running {cmd[:120]!r}: {exc}") from exc
        return CommandResult(self.name, tuple(argv), r.exited, r.stdout, r.stderr)

    @property
    def is_root(self) -> bool:
        if self._root is None:
            self._root = self.run(["id", "-u"]).stdout.strip() == "0"
        return self._root

    @property
    def home(self) -> str:
        if self._home is None:
            self._home = self.run(["sh", "-c", 'printf %s "$HOME"']).stdout.strip() or "/root"
        return self._home

    def read_file(self, path: str, *, sudo: bool = False) -> str | None:
        r = self.run(["sh", "-c", 'if [ -e "$1" ]; then cat -- "$1"; else exit 44; fi', "sh", self.expand(path)], sudo=sudo, ok=(0, 44))
        return None if r.exit_code == 44 else r.stdout

    def write_file(self, path: str, content: str, *, mode: int = 0o644, sudo: bool = False) -> bool:
        # compare and write in one round trip: the script exits 45 when the content is unchanged
        script = (
            'set -e; p="$1"; d=$(dirname "$p"); mkdir -p "$d"; t=$(mktemp "$d/.gpumod.XXXXXX"); cat > "$t"; '
            'if [ -e "$p" ] && cmp -s "$t" "$p"; then rm -f "$t"; exit 45; fi; chmod "$2" "$t"; mv -f "$t" "$p"'
        )
        r = self.run(["sh", "-c", script, "sh", self.expand(path), f"{mode:o}"], sudo=sudo, input=content, ok=(0, 45))
        return r.exit_code == 0

    def base_url(self, port: int) -> str:
        with self._fwd_lock:
            if port not in self._forwards:
                self._ensure_open()
                local = _free_port()
                self._stack.enter_context(self.conn.forward_local(local_port=local, remote_port=port, remote_host="127.0.0.1"))
                self._forwards[port] = local
            return f"http://127.0.0.1:{self._forwards[port]}"

    def close(self) -> None:
        super().close()
        with contextlib.suppress(Exception):
            self._stack.close()
        with contextlib.suppress(Exception):
            self.conn.close()
