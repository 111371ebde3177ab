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
        import logging

        from fabric import Config, Connection

        # paramiko logs every refused forward ("Secsh channel open FAILED"); a probe of a stopped
        # service is expected to be refused, and gpumod reports it in its own words.
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
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
        # Unknown host keys are refused: never auto-add, never silently skip checking. Fabric does
        # not load known_hosts by itself, so load the user's (and the system's) here.
        import contextlib as _cl
        import os as _os

        with _cl.suppress(OSError):
            self.conn.client.load_system_host_keys()
        with _cl.suppress(OSError):
            if _os.path.exists("/etc/ssh/ssh_known_hosts"):
                self.conn.client.load_host_keys("/etc/ssh/ssh_known_hosts")
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
        # Content goes over SFTP (a command's stdin is never closed by Invoke's runner, so `cat >`
        # would wait forever); then one script compares and renames atomically in the target dir.
        import io
        import uuid

        path = self.expand(path)
        if self.read_file(path, sudo=sudo) == content:  # one round trip when nothing changed
            return False
        d = path.rsplit("/", 1)[0] or "/"
        tmp = f"/tmp/.gpumod.{uuid.uuid4().hex}" if sudo and not self.is_root else f"{d}/.gpumod.{uuid.uuid4().hex}"
        self.run(["mkdir", "-p", "--", d], sudo=sudo)
        self._ensure_open()
        try:
            self.conn.put(io.BytesIO(content.encode()), remote=tmp)
        except Exception as exc:  # paramiko/SFTP errors
            raise HostUnreachable(self.name, f"cannot upload {path}: {exc}") from exc
        self.round_trips += 1
        script = ('p=$1; t=$2; if [ -e "$p" ] && cmp -s "$t" "$p"; then rm -f "$t"; exit 45; fi; '
                  'chmod "$3" "$t" && mv -f "$t" "$p"')
        r = self.run(["sh", "-c", script, "sh", path, tmp, f"{mode:o}"], sudo=sudo, ok=(0, 45))
        return r.exit_code == 0

    def base_url(self, port: int) -> str:
        with self._fwd_lock:
            if port not in self._forwards:
                self._ensure_open()
                local = _free_port()
                self._stack.enter_context(self.conn.forward_local(local_port=local, remote_port=port, remote_host="127.0.0.1"))
                # Fabric's tunnel thread binds the local port a moment after the context is entered
                import time as _t

                deadline = _t.monotonic() + 2.0
                while _t.monotonic() < deadline:
                    with socket.socket() as probe_sock:
                        if probe_sock.connect_ex(("127.0.0.1", local)) == 0:
                            break
                    _t.sleep(0.005)
                self._forwards[port] = local
            return f"http://127.0.0.1:{self._forwards[port]}"

    def close(self) -> None:
        super().close()
        with contextlib.suppress(Exception):
            self._stack.close()
        with contextlib.suppress(Exception):
            self.conn.close()
