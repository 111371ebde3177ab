"""The one interface every task uses to reach its target: run, read/write files, HTTP to a port.

Implementations: ``LocalHost`` (subprocess + httpx) and ``SshHost`` (Fabric; HTTP through an SSH
port-forward because services bind 127.0.0.1 on the box).  Commands are argv lists; quoting for a
remote shell happens in exactly one place (``shell_join``).
"""

from __future__ import annotations

import os
import shlex
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ..errors import CommandFailed
from ..result import CommandResult

if TYPE_CHECKING:
    import httpx

    from ..inventory import HostSpec

__all__ = ["READ_SCRIPT", "TRACE", "WRITE_SCRIPT", "CommandResult", "Host", "shell_join"]

#: GPUMOD_TRACE=1 prints every command sent to a host, with its time (and so the round trips)
TRACE = bool(os.environ.get("GPUMOD_TRACE"))


# Files through commands (for hosts whose files are not this machine's): read, and write atomically
# (a temp file in the target directory, then a rename) with the content on stdin.
# (A file behind a directory the login user may not enter is unreadable, not missing: exit 13.)
READ_SCRIPT = ('if [ -e "$1" ]; then cat -- "$1"; elif [ -d "${1%/*}" ] && [ ! -x "${1%/*}" ]; then '
               'echo "cannot look into ${1%/*}: permission denied" >&2; exit 13; else exit 44; fi')
WRITE_SCRIPT = 'set -e; d=$(dirname "$1"); mkdir -p "$d"; t=$(mktemp "$d/.gpumod.XXXXXX"); cat > "$t"; chmod "$2" "$t"; mv -f "$t" "$1"'


def shell_join(argv: Sequence[str]) -> str:
    """The single choke point where argv becomes shell text."""
    return " ".join(shlex.quote(str(a)) for a in argv)


class Host(ABC):
    """A target box. Subclasses implement ``_run``, file I/O and ``base_url``."""

    #: commands, files and /run are this very machine's (so facts may be read directly)
    is_this_machine = False
    #: the host's processes run on this machine's kernel and disk (this machine itself, or a
    #: namespace of it): a path names the same file here and there, so this interpreter and this
    #: package run there as they are, an flock taken by this process holds there, a command costs
    #: no round trip, and NVML read in this process sees its GPUs. False for a box reached over SSH.
    colocated = False

    def __init__(self, spec: HostSpec):
        self.spec = spec
        self.name = spec.name
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()
        self.round_trips = 0  # commands sent; quoted in benchmarks and notes

    # -- commands -------------------------------------------------------
    @abstractmethod
    def _run(self, argv: Sequence[str], *, input: str | None, timeout: float | None, env: dict[str, str] | None) -> CommandResult: ...

    def run(
        self,
        argv: Sequence[str],
        *,
        sudo: bool = False,
        ok: Iterable[int] = (0,),
        input: str | None = None,
        timeout: float | None = 60,
        env: dict[str, str] | None = None,
        what: str = "",
    ) -> CommandResult:
        """Run argv; raise CommandFailed unless the exit code is in ``ok``."""
        argv = [str(a) for a in argv]
        if sudo and not self.is_root:
            argv = ["sudo", "-n", "--", *argv]
        self.round_trips += 1
        if TRACE:
            import time

            t0 = time.perf_counter()
            result = self._run(argv, input=input, timeout=timeout, env=env)
            sys.stderr.write(f"[trace {self.name}] #{self.round_trips} {time.perf_counter() - t0:.3f}s rc={result.exit_code} "
                             f"{shell_join(argv)[:160]}\n")
        else:
            result = self._run(argv, input=input, timeout=timeout, env=env)
        if result.exit_code not in tuple(ok):
            raise CommandFailed(result, what)
        return result

    def sh(self, script: str, *, sudo: bool = False, ok: Iterable[int] = (0,), input: str | None = None,
           timeout: float | None = 60, what: str = "") -> CommandResult:
        """Run a POSIX shell script whose variable parts were quoted with ``shell_join``/``shlex.quote``."""
        return self.run(["sh", "-c", script], sudo=sudo, ok=ok, input=input, timeout=timeout, what=what)

    @property
    @abstractmethod
    def is_root(self) -> bool: ...

    @property
    @abstractmethod
    def home(self) -> str: ...

    def expand(self, path: str) -> str:
        if path == "~" or path.startswith("~/"):
            return self.home + path[1:]
        return path

    # -- files ----------------------------------------------------------
    @abstractmethod
    def read_file(self, path: str, *, sudo: bool = False) -> str | None:
        """File text, or None when it does not exist."""

    @abstractmethod
    def write_file(self, path: str, content: str, *, mode: int = 0o644, sudo: bool = False) -> bool:
        """Write atomically (temp file + rename) when content differs; return whether it changed."""

    def _read_by_command(self, path: str, *, sudo: bool = False) -> str | None:
        r = Host.run(self, ["sh", "-c", READ_SCRIPT, "sh", self.expand(path)], sudo=sudo, ok=(0, 44))
        return None if r.exit_code == 44 else r.stdout

    def remove_file(self, path: str, *, sudo: bool = False) -> bool:
        path = self.expand(path)
        r = self.run(["sh", "-c", 'if [ -e "$1" ]; then rm -f -- "$1" && echo removed; fi', "sh", path], sudo=sudo)
        return "removed" in r.stdout

    def makedirs(self, path: str, *, sudo: bool = False) -> None:
        self.run(["mkdir", "-p", "--", self.expand(path)], sudo=sudo)

    # -- HTTP -----------------------------------------------------------
    @abstractmethod
    def base_url(self, port: int) -> str:
        """A URL prefix, reachable from this controller, for 127.0.0.1:port on the host."""

    @property
    def http(self) -> httpx.Client:
        """One pooled client per run, made on first use by ``_make_http_client``."""
        with self._http_lock:
            if self._http is None:
                import httpx

                self._http = self._make_http_client(httpx.Timeout(5.0, connect=2.0),
                                                    httpx.Limits(max_connections=64, max_keepalive_connections=32))
            return self._http

    def ask(self, method: str, url: str, *, timeout: float, json: object = None, params: object = None,
            headers: dict[str, str] | None = None) -> tuple[int, str]:
        """One HTTP request as ``(status, text)``, never a transport exception: status 0 nothing
        listens, -1 timed out, -2 any other transport error (the text says which)."""
        import httpx

        try:
            r = self.http.request(method, url, json=json, params=params, headers=headers,  # type: ignore[arg-type]
                                  timeout=timeout)
            return r.status_code, r.text
        except httpx.ConnectError:
            return 0, "connection refused"
        except httpx.TimeoutException:
            return -1, "timed out"
        except httpx.HTTPError as exc:
            return -2, f"{type(exc).__name__}: {exc}"

    def listens(self, port: int) -> bool | None:
        """Whether anything accepts connections on the box's 127.0.0.1:``port``, where that is known
        without an HTTP request (this machine: one connect, kept for the request that follows);
        None elsewhere: the request itself tells."""
        return None

    def _make_http_client(self, timeout: httpx.Timeout, limits: httpx.Limits) -> httpx.Client:
        import httpx

        # trust_env=False: a proxy from the environment must never see 127.0.0.1 traffic.
        # verify=False: only plain HTTP to 127.0.0.1 goes through this client, and loading a CA
        # bundle would cost ~20 ms per command for nothing.
        return httpx.Client(verify=False, timeout=timeout, trust_env=False, limits=limits)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
