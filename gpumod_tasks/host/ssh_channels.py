"""Two ways to use one SSH connection well: HTTP over direct-tcpip channels, and warm remote shells.

**HTTP.**  Services bind 127.0.0.1 on the box, so every HTTP connection is an SSH ``direct-tcpip``
channel (what ``ssh -L`` does per connection) opened on the run's one SSH transport.  An httpcore
network backend makes httpx use them: no local listening ports or tunnel threads, connections are
kept alive and reused like any httpx pool, and a port nobody listens on fails at once with a
ConnectError (a refused channel) instead of hanging a tunnel thread.

**Commands.**  sshd runs every command through the user's login shell, which on many boxes sources
slow rc files (pyenv, conda: 100 ms and more) for each one.  A ``ShellPool`` keeps a few ``sh``
processes open on the box and sends commands to them, each answered with its exit code and the
exact byte counts of stdout and stderr, so a command costs a channel write and a read.  A command
that times out or a broken channel retires its shell; a lost connection raises.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import httpcore


class ChannelStream(httpcore.NetworkStream):
    def __init__(self, chan: Any):
        self.chan = chan

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.chan.settimeout(timeout)
        try:
            return self.chan.recv(max_bytes)
        except socket.timeout as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.chan.settimeout(timeout)
        try:
            self.chan.sendall(buffer)
        except socket.timeout as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    def close(self) -> None:
        self.chan.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("TLS to a service on the box is not supported through the SSH channel")

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self.chan.recv_ready() or self.chan.closed
        return None


class SshNetworkBackend(httpcore.NetworkBackend):
    """``connect_tcp(host, port)`` = a direct-tcpip channel to host:port as seen from the box."""

    def __init__(self, get_transport: Any):
        self.get_transport = get_transport

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        import paramiko

        try:
            chan = self.get_transport().open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
        except paramiko.ChannelException as exc:  # the box refused: nothing listens there
            raise httpcore.ConnectError(f"connection refused by {host}:{port} on the box ({exc})") from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise httpcore.ConnectError(f"SSH channel to {host}:{port} failed: {exc}") from exc
        return ChannelStream(chan)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:  # pragma: no cover
        raise httpcore.ConnectError("unix sockets are not forwarded")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def http_client_over(get_transport: Any, timeout: Any, limits: Any) -> Any:
    """An httpx.Client whose connections are SSH channels (http:// only)."""
    import httpx

    transport = httpx.HTTPTransport(limits=limits, trust_env=False, verify=False)
    transport._pool = httpcore.ConnectionPool(  # the documented pool, with our network backend
        max_connections=limits.max_connections, max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry, network_backend=SshNetworkBackend(get_transport))
    return httpx.Client(transport=transport, timeout=timeout, trust_env=False)


class ShellDead(Exception):
    pass


class _Shell:
    def __init__(self, transport: Any):
        self.chan = transport.open_session()
        self.chan.exec_command("exec sh")
        self.buf = b""

    def _read_until(self, n: int, deadline: float | None) -> bytes:
        while len(self.buf) < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.chan.settimeout(left)
            else:
                self.chan.settimeout(None)
            try:
                data = self.chan.recv(65536)
            except socket.timeout:
                raise TimeoutError from None
            if not data:
                raise ShellDead("the remote shell closed")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _read_line(self, deadline: float | None) -> bytes:
        while b"\n" not in self.buf:
            self._read_until(len(self.buf) + 1, deadline)
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def run(self, cmd: str, timeout: float | None) -> tuple[int, str, str]:
        mark = uuid.uuid4().hex
        # stdout and stderr to files, then a header with the exit code and both sizes, then both
        script = (f'o=$(mktemp) e=$(mktemp); ( {cmd} ) </dev/null >"$o" 2>"$e"; r=$?; '
                  f'printf "\\n{mark} %d %d %d\\n" "$r" "$(wc -c <"$o")" "$(wc -c <"$e")"; cat "$o" "$e"; rm -f "$o" "$e"\n')
        self.chan.sendall(script.encode())
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            line = self._read_line(deadline)
            if line.startswith(mark.encode()):
                break
        _, rc, no, ne = line.decode().split()
        out = self._read_until(int(no), deadline)
        err = self._read_until(int(ne), deadline)
        return int(rc), out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def close(self) -> None:
        try:
            self.chan.close()
        except Exception:  # noqa: BLE001
            pass


class ShellPool:
    """Up to ``size`` warm ``sh`` processes on the box; commands run on whichever is free."""

    def __init__(self, get_transport: Any, size: int = 4):
        self.get_transport = get_transport
        self.size = size
        self.idle: queue.LifoQueue[_Shell] = queue.LifoQueue()
        self.count = 0
        self.lock = threading.Lock()

    def _take(self) -> _Shell:
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            pass
        with self.lock:
            make = self.count < self.size
            if make:
                self.count += 1
        if make:
            try:
                return _Shell(self.get_transport())
            except Exception:
                with self.lock:
                    self.count -= 1
                raise
        return self.idle.get()

    def run(self, command: str, timeout: float | None) -> tuple[int, str, str]:
        """Run one shell command line (already quoted) on a free shell."""
        sh = self._take()
        try:
            result = sh.run(command, timeout)
        except BaseException:
            sh.close()  # mid-command state unknown: retire it
            with self.lock:
                self.count -= 1
            raise
        self.idle.put(sh)
        return result

    def close(self) -> None:
        while True:
            try:
                self.idle.get_nowait().close()
            except queue.Empty:
                break
