"""The host-level switch lock: two switches against one box, from any controller, never interleave.

The lock is held *on the box* and dies with the holder: locally an ``flock`` on
``<state_dir>/switch.lock`` held by this process; over SSH an ``flock`` held by a remote command
whose channel stays open for the duration (a lost connection ends it and frees the lock).

The file's text names the holder (pid, controller, what, since).  A crashed holder leaves its text
behind while the kernel frees its lock, so the text alone never means a switch is in progress:
``held_lock_text`` asks whether the lock is really held (and the recorded pid alive) first.
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


def lock_path(state_dir: str) -> str:
    return f"{state_dir}/switch.lock"


@contextlib.contextmanager
def host_lock(host: Host, state_dir: str, *, what: str, wait: bool = True, timeout: float = 900,
              on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    if host.colocated:  # an flock taken by this process holds there
        with _local_lock(lock_path(state_dir), what=what, wait=wait, timeout=timeout, on_wait=on_wait):
            yield
    else:
        with _remote_lock(host, lock_path(state_dir), what=what, wait=wait, timeout=timeout, on_wait=on_wait):
            yield


def _holder_text(what: str) -> str:
    return json.dumps({"pid": os.getpid(), "controller": socket.gethostname(), "what": what, "since": time.time()})


# Is the lock held right now? A shared flock tried without waiting: refused while a holder has it.
# (Exit 3: no lock file; 4: nobody holds it; 0: held, its text on stdout.)
_PROBE_SCRIPT = '[ -e "$1" ] || exit 3; exec 9<"$1"; if flock -n -s 9; then exit 4; fi; cat -- "$1"'


def held_lock_text(host: Host, state_dir: str) -> str | None:
    """The holder's record when a switch holds the host lock now; None when the lock is free (the
    text a crashed switch left behind is no holder) or when its recorded pid, on this controller,
    has died."""
    path = lock_path(state_dir)
    if host.colocated:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text: str | None = Path(path).read_text()
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
        finally:
            os.close(fd)
    else:
        r = host.run(["sh", "-c", _PROBE_SCRIPT, "sh", path], ok=(0, 3, 4), what="probe the host lock")
        text = r.stdout if r.exit_code == 0 else None
    if text is None or not _holder_alive(text):
        return None
    return text.strip() or "{}"


def _holder_alive(text: str) -> bool:
    """False only when the holder is known dead: a controller of this machine's name whose pid is gone."""
    try:
        d = json.loads(text)
        pid = int(d.get("pid", 0))
    except (ValueError, TypeError, AttributeError):
        return True  # a holder mid-write, or a foreign record: the lock itself says it is held
    if d.get("controller") != socket.gethostname() or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def describe_holder(text: str) -> str:
    try:
        d = json.loads(text)
        ago = time.time() - float(d.get("since", time.time()))
        return f"{d.get('what', '?')} (pid {d.get('pid')} on {d.get('controller')}, {ago:.0f}s ago)"
    except (ValueError, TypeError, AttributeError):
        return "another gpumod process"


#: how long a lock found taken is tried again before it counts as busy: an observer's probe
#: (``held_lock_text``) holds it for a moment, and must not make a --no-wait switch refuse
BUSY_GRACE_S = 0.1


def _flock_within(fd: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


@contextlib.contextmanager
def _local_lock(path: str, *, what: str, wait: bool, timeout: float, on_wait: Callable[[str], None] | None) -> Iterator[None]:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            _flock_within(fd, BUSY_GRACE_S)
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
        f"if ! flock -w {BUSY_GRACE_S:g} 9; then echo BUSY; cat {q}; echo; "
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
