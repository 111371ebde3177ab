"""What each box's router daemon says about its models (``GET /models``), all boxes at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from .settings import Box


def parse_models(body: object) -> dict[str, str] | None:
    """``{"models": [{"id", "state", ...}]}`` -> service id -> state; None when it is not that."""
    if not isinstance(body, dict) or not isinstance(body.get("models"), list):
        return None
    out = {}
    for m in body["models"]:
        if isinstance(m, dict) and isinstance(m.get("id"), str):
            out[m["id"]] = str(m.get("state", "error"))
    return out


def box_states(box: Box, key: str | None, client: httpx.Client, timeout: float = 2.0) -> dict[str, str] | None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = client.get(f"{box.url}/models", headers=headers, timeout=timeout)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    try:
        return parse_models(r.json())
    except ValueError:
        return None


def fleet_states(boxes: tuple[Box, ...], keys: dict[str, str], client: httpx.Client, timeout: float = 2.0) -> dict[str, dict[str, str] | None]:
    if not boxes:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(boxes))) as ex:
        futs = {b.name: ex.submit(box_states, b, keys.get(b.name), client, timeout) for b in boxes}
    return {n: f.result() for n, f in futs.items()}
