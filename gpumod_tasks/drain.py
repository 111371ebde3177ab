"""Drain through the router daemon: a run that is about to sleep or stop services asks the daemon
registered on the box (``daemon/announce.py``) to hold new requests for them and to wait until the
requests it is serving have finished, so a CLI switch never cuts off an answer the daemon streams.

``POST /drain {"services": [...], "hold_s": N}`` answers when their in-flight count is 0 (or the
daemon's drain timeout passed); the services stay held (new requests queue) until ``POST
/drain/end`` or, should the run die, until the host lock is free again. No daemon registered,
its pid gone, or nothing listening: nothing to drain, the run goes on as before.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from .daemon.announce import DaemonLink
from .target import Target

HOLD_S = 900.0  # the host lock's own wait limit: no run holds services longer
ANSWER_S = 120.0  # the daemon answers within its drain timeout (30 s by default)


def _alive_here(target: Target, link: DaemonLink) -> bool:
    if not target.host.is_this_machine:
        return True  # another box's pid: the connection decides
    try:
        os.kill(link.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _key(target: Target, link: DaemonLink) -> str:
    if link.api_key:
        return link.api_key
    if link.api_key_file:
        return (target.host.read_file(link.api_key_file) or "").strip()
    return ""


def _post(target: Target, link: DaemonLink, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """The daemon's JSON answer; None when no daemon answers there (stale registration)."""
    import httpx

    key = _key(target, link)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = link.url(target.host.base_url(link.port)) + path
    try:
        r = target.host.http.post(url, json=body, headers=headers, timeout=timeout)
    except httpx.ConnectError:
        return None
    if r.status_code == 404:
        return None  # something else listens on that port, or a daemon from before /drain
    if r.status_code != 200:
        raise DrainError(f"the router daemon (pid {link.pid}, port {link.port}) refused {path}: "
                         f"{r.status_code} {r.text[:200]}")
    data = r.json()
    return data if isinstance(data, dict) else {}


class DrainError(Exception):
    pass


@contextlib.contextmanager
def drained(target: Target, link: DaemonLink | None, services: list[str], *,
            note: Callable[[str], None] | None = None) -> Iterator[dict[str, Any] | None]:
    """Hold ``services`` at the daemon and wait for its in-flight requests to them; release the
    hold on exit. Yields the daemon's answer (None: no daemon, nothing done)."""
    say = note or (lambda msg: None)
    if link is None or not services or not _alive_here(target, link):
        yield None
        return
    import httpx

    try:
        ans = _post(target, link, "/drain", {"services": services, "hold_s": HOLD_S}, ANSWER_S)
    except (httpx.HTTPError, ValueError, DrainError) as exc:
        say(f"router daemon (pid {link.pid}): could not drain {', '.join(services)}: {exc}")
        yield None
        return
    if ans is None:
        yield None
        return
    waited = ans.get("waited_s", 0)
    left = {k: v for k, v in (ans.get("in_flight") or {}).items() if v}
    if left:
        say(f"router daemon (pid {link.pid}): {', '.join(f'{k} ({v})' for k, v in left.items())} still had "
            f"requests in flight after {waited:g}s; going on")
    elif ans.get("had"):
        say(f"router daemon (pid {link.pid}): drained {', '.join(f'{k} ({v})' for k, v in ans['had'].items())} "
            f"in {waited:g}s")
    try:
        yield ans
    finally:
        with contextlib.suppress(httpx.HTTPError, ValueError, DrainError):
            _post(target, link, "/drain/end", {"services": services}, 30)
