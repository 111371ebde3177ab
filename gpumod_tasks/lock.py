"""The host-level switch lock: two switches against one box, from any controller, never interleave.

The lock is held *on the box* and dies with the holder: locally an ``flock`` on
``<state_dir>/switch.lock`` held by this process; over SSH an ``flock`` held by a remote command
whose channel stays open for the duration (a lost connection ends it and frees the lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import LockBusy
from .host.base import Host
from .host.local import LocalHost


def lock_path(state_dir: str) -> str:
    return f"{state_dir}/switch.lock"


@contextlib.contextmanager
def host_lock(host: Host, state_dir: str, *, what: str, wait: bool = True, timeout: float = 900,
              on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    if isinstance(host, LocalHost):
        with _local_lock(lock_path(state_dir), what=what, wait=wait, timeout=timeout, on_wait=on_wait):
            yield
    else:
        with _remote_lock(host, lock_path(state_dir), what=what, wait=wait, timeout=timeout, on_wait=on_wait):
            yield


def _holder_text(what: str) -> str:
    return json.dumps({"pid": os.getpid(), "controller": socket.gethostname(), "what": what, "since": time.time()})


def describe_holder(text: str) -> str:
    try:
        d = json.loads(text)
        ago = time.time() - float(d.get("since", time.time()))
        return f"{d.get('what', '?')} (pid {d.get('pid')} on {d.get('controller')}, {ago:.0f}s ago)"
    except (ValueError, TypeError):
        return "another gpumod process"


@contextlib.contextmanager
def _local_lock(path: str, *, what: str, wait: bool, timeout: float, on_wait: Callable[[str], None] | None) -> Iterator[None]:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(Path(path).read_text() or "{}")
            if not wait:
                raise LockBusy(f"another switch holds the host lock: {holder}; retry later or drop --no-wait") from None
            if on_wait:
                on_wait(f"waiting for the host lock held by {holder}")
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockBusy(f"timed out after {timeout:.0f}s waiting for the host lock held by {holder}") from None
                    time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_text(what).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _remote_lock(host: Host, path: str, *, what: str, wait: bool, timeout: float, on_wait: Callable[[str], None] | None) -> Iterator[None]:
    ssh = host  # SshHost: hold flock in a remote command whose channel stays open
    ssh._ensure_open()  # type: ignore[attr-defined]
    transport = ssh.conn.client.get_transport()  # type: ignore[attr-defined]
    q = shlex.quote(path)
    info = shlex.quote(_holder_text(what))
    script = (
        f"mkdir -p $(dirname {q}); exec 9>>{q}; "
        f"if ! flock -n 9; then echo BUSY; cat {q}; echo; "
        + (f"flock -w {int(timeout)} 9 || {{ echo TIMEOUT; exit 1; }}; " if wait else "exit 1; ")
        + f"fi; : > {q}; printf %s {info} > {q}; echo LOCKED; cat > /dev/null"
    )
    chan = transport.open_session()
    chan.exec_command(f"sh -c {shlex.quote(script)}")
    f = chan.makefile("r")
    line = f.readline().strip()
    if line == "BUSY":
        holder = describe_holder(f.readline().strip())
        if not wait:
            chan.close()
            raise LockBusy(f"[{host.name}] another switch holds the host lock: {holder}")
        if on_wait:
            on_wait(f"waiting for the host lock held by {holder}")
        while line != "LOCKED":
            line = f.readline().strip()
            if line in ("TIMEOUT", ""):
                chan.close()
                raise LockBusy(f"[{host.name}] could not take the host lock (held by {holder})")
    if line != "LOCKED":
        chan.close()
        raise LockBusy(f"[{host.name}] could not take the host lock: {line!r}")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            chan.shutdown_write()
            chan.close()
