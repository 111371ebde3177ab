"""A remote box over SSH with Fabric.

Imported only when a remote host is targeted (Fabric and paramiko cost a few hundred ms to
import).  One ``Connection`` is held per run; HTTP to services that bind 127.0.0.1 on the box goes
through SSH direct-tcpip channels on that connection (``ssh_channels.py``), and commands run on a
few warm remote shells instead of one sshd session each.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
from collections.abc import Sequence
from typing import Any

from ..errors import HostError, HostUnreachable
from .base import CommandResult, Host, shell_join


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
        # not load known_hosts by itself, so load the files ssh_config names for this host
        # (UserKnownHostsFile), else the user's, and the system's.
        import os as _os

        user_files = str(self.conn.ssh_config.get("userknownhostsfile", "")).split()
        if user_files:
            for f in user_files:
                with contextlib.suppress(OSError):
                    self.conn.client.load_host_keys(_os.path.expanduser(f))
        else:
            with contextlib.suppress(OSError):
                self.conn.client.load_system_host_keys()
        with contextlib.suppress(OSError):
            if _os.path.exists("/etc/ssh/ssh_known_hosts"):
                self.conn.client.load_host_keys("/etc/ssh/ssh_known_hosts")
        self.conn.client.set_missing_host_key_policy(RejectPolicy())
        self._pool: Any = None
        self._was_open = False
        self._pool_lock = threading.Lock()
        self._home: str | None = None
        self._root: bool | None = None

    def _ensure_open(self) -> None:
        if self.conn.is_connected:
            return
        if self._was_open:
            # never reconnect behind the caller's back: the host lock lived on that session
            raise HostUnreachable(self.name, f"the SSH connection to {self.spec.ssh_host} was lost")
        import paramiko

        try:
            self.conn.open()
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc) or "Unknown server" in str(exc):
                port = f" -p {self.spec.ssh_port}" if self.spec.ssh_port else ""
                raise HostUnreachable(
                    self.name,
                    f"host key of {self.spec.ssh_host} is not known; refusing to connect. "
                    f"Trust it first with: ssh-keyscan{port} {self.spec.ssh_host} >> {self._known_hosts_file()} "
                    f"(after checking its fingerprint)",
                ) from exc
            raise HostUnreachable(self.name, f"SSH connection failed: {exc}") from exc
        except OSError as exc:
            raise HostUnreachable(self.name, f"cannot reach {self.spec.ssh_host}: {exc}") from exc
        self._was_open = True

    def _known_hosts_file(self) -> str:
        files = str(self.conn.ssh_config.get("userknownhostsfile", "")).split()
        return files[0] if files else "~/.ssh/known_hosts"

    def _transport(self) -> Any:
        self._ensure_open()
        return self.conn.client.get_transport()

    def _run(self, argv: Sequence[str], *, input: str | None, timeout: float | None, env: dict[str, str] | None) -> CommandResult:
        from .ssh_channels import ShellDead, ShellPool

        self._ensure_open()
        words = list(argv)
        if env:
            words = ["env", *[f"{k}={v}" for k, v in env.items()], *words]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ShellPool(self._transport)
        line = shell_join(words)
        if input is not None:
            line = shell_join(["sh", "-c", f"printf %s {shlex.quote(input)} | {line}"])
        try:
            rc, out, err = self._pool.run(line, timeout)
        except TimeoutError:
            raise HostError(self.name, f"command timed out after {timeout}s: {line[:200]}") from None
        except (ShellDead, EOFError, OSError) as exc:
            raise HostUnreachable(self.name, f"connection lost while running {line[:120]!r}: {exc}") from exc
        except Exception as exc:  # paramiko errors: the connection is gone
            raise HostUnreachable(self.name, f"connection lost while running {line[:120]!r}: {exc}") from exc
        return CommandResult(self.name, tuple(argv), rc, out, err)

    def _whoami(self) -> None:
        r = self.run(["sh", "-c", 'id -u; printf %s "$HOME"'])
        uid, _, home = r.stdout.partition("\n")
        self._root = uid.strip() == "0"
        self._home = home.strip() or ("/root" if self._root else "~")

    @property
    def is_root(self) -> bool:
        if self._root is None:
            self._whoami()
        return bool(self._root)

    @property
    def home(self) -> str:
        if self._home is None:
            self._whoami()
        return str(self._home)

    def read_file(self, path: str, *, sudo: bool = False) -> str | None:
        return self._read_by_command(path, sudo=sudo)

    #: a file whose quoted text is up to this size goes in the command itself (one round trip); a
    #: larger one over SFTP (the command line is one exec argument: Linux caps one at 128 KiB)
    INLINE_WRITE_MAX = 96 * 1024

    def write_file(self, path: str, content: str, *, mode: int = 0o644, sudo: bool = False) -> bool:
        # A small file travels in the command that writes it (the shell's stdin): one script writes
        # it beside the target under umask 077, compares and renames atomically, one round trip.
        # A larger one goes over SFTP next to the target (or to /tmp when sudo is needed), then the
        # same compare and rename: two round trips, whether or not it changed.
        import io
        import uuid

        path = self.expand(path)
        if len(content) <= self.INLINE_WRITE_MAX and "\0" not in content and len(shlex.quote(content)) <= self.INLINE_WRITE_MAX:
            tmp_here = f"{path.rsplit('/', 1)[0] or ''}/.gpumod.{uuid.uuid4().hex}"
            inline = _place_script(fill='umask 077; cat > "$t" || { rm -f "$t"; exit 1; }; ')
            r = self.run(["sh", "-c", inline, "sh", path, tmp_here, f"{mode:o}"], sudo=sudo, ok=(0, 45), input=content)
            return r.exit_code == 0
        d = path.rsplit("/", 1)[0] or "/"
        via_tmp = sudo and not self.is_root
        tmp = f"/tmp/.gpumod.{uuid.uuid4().hex}" if via_tmp else f"{d}/.gpumod.{uuid.uuid4().hex}"
        self._ensure_open()
        for attempt in (1, 2):
            try:
                self.conn.put(io.BytesIO(content.encode()), remote=tmp)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise HostUnreachable(self.name, f"cannot upload {path}: {d} cannot be created") from None
                self.run(["mkdir", "-p", "--", d], sudo=sudo)  # first file in a new directory
            except Exception as exc:  # paramiko/SFTP errors: the connection is gone
                raise HostUnreachable(self.name, f"connection lost while uploading {path}: {exc}") from exc
        self.round_trips += 1
        # through sudo the uploaded file belongs to the login user: hand it to root before it lands
        # in a root directory (a unit file the user could edit would be a privilege escalation)
        script = _place_script(owner='chown 0:0 "$t" && ' if via_tmp else "")
        r = self.run(["sh", "-c", script, "sh", path, tmp, f"{mode:o}"], sudo=sudo, ok=(0, 45))
        return r.exit_code == 0

    def base_url(self, port: int) -> str:
        # the address as the box sees it: every connection is a direct-tcpip channel (ssh -L)
        return f"http://127.0.0.1:{port}"

    def _make_http_client(self, timeout: Any, limits: Any) -> Any:
        from .ssh_channels import http_client_over

        return http_client_over(self._transport, timeout, limits)

    def close(self) -> None:
        super().close()
        if self._pool is not None:
            self._pool.close()
        with contextlib.suppress(Exception):
            self.conn.close()


def _place_script(*, fill: str = "", owner: str = "") -> str:
    """The script that lands a written file: ``$1`` the target, ``$2`` the temporary file beside it
    (or in /tmp), ``$3`` the mode. ``fill`` first writes ``$2`` (from stdin); exit 45 when the target
    already holds the same bytes (the temporary file is removed), else chmod (after ``owner``, a
    chown) and an atomic rename."""
    return ('p=$1; t=$2; mkdir -p -- "$(dirname -- "$p")" || exit 1; ' + fill
            + 'if [ -e "$p" ] && cmp -s "$t" "$p"; then rm -f "$t"; exit 45; fi; '
            + f'{owner}chmod "$3" "$t" && mv -f "$t" "$p"')
