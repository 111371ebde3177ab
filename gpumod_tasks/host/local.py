"""The local machine: subprocess for commands, direct file I/O, plain HTTP to 127.0.0.1.

The engines' requests (``ask``) go through the standard library's ``http.client`` with a
keep-alive pool (``http_local``); ``http`` (httpx) stays for the few callers that want a client."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ..errors import HostError
from .base import WRITE_SCRIPT, CommandResult, Host
from .http_local import LocalHttp


class LocalHost(Host):
    is_this_machine = True
    colocated = True
    _local_http: LocalHttp | None = None

    @property
    def is_root(self) -> bool:
        return os.geteuid() == 0

    @property
    def home(self) -> str:
        return os.path.expanduser("~")

    def _run(self, argv: Sequence[str], *, input: str | None, timeout: float | None, env: dict[str, str] | None) -> CommandResult:
        full_env = None
        if env:
            full_env = {**os.environ, **env}
        try:
            p = subprocess.run(
                list(argv),
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=full_env,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError:
            return CommandResult(self.name, tuple(argv), 127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired as exc:
            raise HostError(self.name, f"command timed out after {timeout}s: {' '.join(argv)[:200]}") from exc
        return CommandResult(self.name, tuple(argv), p.returncode, p.stdout, p.stderr)

    def read_file(self, path: str, *, sudo: bool = False) -> str | None:
        p = Path(self.expand(path))
        try:
            return p.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except PermissionError:
            if not sudo:
                raise HostError(self.name, f"cannot read {p}: permission denied") from None
            r = self.run(["cat", "--", str(p)], sudo=True, ok=(0, 1))
            return r.stdout if r.exit_code == 0 else None
        except (OSError, UnicodeDecodeError) as exc:  # a directory where a file belongs, an I/O error, bytes
            raise HostError(self.name, f"cannot read {p}: {getattr(exc, 'strerror', None) or exc}") from None

    def write_file(self, path: str, content: str, *, mode: int = 0o644, sudo: bool = False) -> bool:
        p = Path(self.expand(path))
        if self.read_file(str(p), sudo=sudo) == content:
            return False
        if sudo and not self.is_root:
            self.run(["sh", "-c", WRITE_SCRIPT, "sh", str(p), f"{mode:o}"], sudo=True, input=content)
            return True
        import tempfile  # only a command that writes pays for it (with shutil and random)

        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".gpumod.")
        except OSError as exc:
            raise HostError(self.name, f"cannot write {p}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(content)
            os.chmod(tmp, mode)
            os.replace(tmp, p)
        except OSError as exc:  # a full disk, a directory in the way: nothing half-written is left
            Path(tmp).unlink(missing_ok=True)
            raise HostError(self.name, f"cannot write {p}: {exc.strerror or exc}") from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True

    def remove_file(self, path: str, *, sudo: bool = False) -> bool:
        if sudo and not self.is_root:
            return super().remove_file(path, sudo=sudo)
        try:
            Path(self.expand(path)).unlink()
            return True
        except FileNotFoundError:
            return False

    def makedirs(self, path: str, *, sudo: bool = False) -> None:
        if sudo and not self.is_root:
            return super().makedirs(path, sudo=sudo)
        Path(self.expand(path)).mkdir(parents=True, exist_ok=True)

    def base_url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    def ask(self, method: str, url: str, *, timeout: float, json: object = None, params: object = None,
            headers: dict[str, str] | None = None) -> tuple[int, str]:
        return self._pool().ask(method, url, timeout=timeout, json=json, params=params, headers=headers)

    def listens(self, port: int) -> bool | None:
        """Something accepts connections on 127.0.0.1:``port`` (a refused connect is False); the
        connection is kept for the next request to that port.  None for a subclass whose loopback
        is not this machine's (a namespace's)."""
        return self._pool().preconnect(port) if self.is_this_machine else None

    def _pool(self) -> LocalHttp:
        with self._http_lock:
            if self._local_http is None:
                self._local_http = LocalHttp()
            return self._local_http

    def close(self) -> None:
        pool, self._local_http = self._local_http, None
        if pool is not None:
            pool.close()
        super().close()
