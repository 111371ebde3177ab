"""A unit's private environment: where it lives (0600, never in the 0644 unit or the 0755
supervisor script), how it is written and quoted, its digest in the unit, and how secret-looking
values are masked for display. A leaf: the renderer and the service managers both use it."""

from __future__ import annotations

import hashlib
import re
import shlex
from typing import TYPE_CHECKING, Any

from .errors import RenderError

if TYPE_CHECKING:
    from .host.base import Host

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def no_control(value: str, what: str) -> str:
    """Refuse a control character in a value written into a unit (defense in depth)."""
    if _CONTROL.search(value):
        raise RenderError(f"{what} holds a control character ({value[:80]!r}): refused, it would change the unit")
    return value




def env_file_path(state_dir: str, unit: str) -> str:
    """A unit's private environment (mode 0600, in a 0700 directory): the preset's ``env`` values,
    which may be tokens, never go into the 0644 unit or the 0755 supervisor script."""
    return f"{state_dir}/env/{unit}.env"


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_file_text(env: tuple[tuple[str, str], ...]) -> str:
    """``NAME='value'`` lines, quoted so both systemd's EnvironmentFile= parser and ``sh``'s ``.``
    read each value verbatim (no expansion); control characters are refused."""
    lines = ["# gpumod: private environment of one unit (generated; mode 0600)"]
    for k, v in env:
        if not _ENV_NAME.match(k):
            raise RenderError(f"environment variable name {k[:80]!r} is refused (letters, digits and _ only)")
        no_control(v, f"environment variable {k}")
        lines.append(f"{k}={shlex.quote(v)}")
    return "\n".join(lines) + "\n"


def write_env_file(host: Host, path: str, env: tuple[tuple[str, str], ...], *, sudo: bool = False) -> bool:
    """Write a unit's private environment file: mode 0600 in a 0700 directory (made so first, so
    the file is never readable by others, not even while it is being written)."""
    d = path.rsplit("/", 1)[0] or "/"
    host.run(["sh", "-c", 'mkdir -p -m 700 -- "$1" && chmod 700 -- "$1" && { [ ! -e "$2" ] || chmod 600 -- "$2"; }',
              "sh", d, path], sudo=sudo, what="private environment directory")
    return host.write_file(path, env_file_text(env), mode=0o600, sudo=sudo)


def env_digest(env: tuple[tuple[str, str], ...]) -> str:
    """A short digest of the private environment, written into the unit so that a changed value
    changes the unit (and the install step sees it) without the value being in the unit."""
    return hashlib.sha256(env_file_text(env).encode()).hexdigest()[:16]


_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSW|API_?KEY|ACCESS_?KEY|PRIVATE|CREDENTIAL|AUTH|COOKIE|SESSION)", re.I)
_SECRET_VALUE = re.compile(r"^(hf_|sk-|ghp_|gho_|github_pat_|xox[bp]-|AKIA|glpat-)|^eyJ[A-Za-z0-9_-]+\.")


def looks_secret(name: str, value: str) -> bool:
    """A variable whose name or value looks like a credential (HF_TOKEN, *_API_KEY, hf_..., sk-...)."""
    return bool(_SECRET_NAME.search(name) or _SECRET_VALUE.search(value))


def mask(value: str) -> str:
    return "****" if len(value) < 12 else f"{value[:3]}****({len(value)} chars)"


def mask_env(env: Any) -> list[tuple[str, str]]:
    """``(name, value)`` pairs for display, secret-looking values masked."""
    return [(str(k), mask(str(v)) if looks_secret(str(k), str(v)) else str(v)) for k, v in env]


def masked_preset(d: dict[str, Any]) -> dict[str, Any]:
    """A preset as ``dataclasses.asdict`` gives it, for display: ``env`` and a container's
    ``environment`` with secret-looking values masked."""
    out = dict(d)
    if out.get("env"):
        out["env"] = mask_env(out["env"])
    if isinstance(out.get("docker"), dict) and out["docker"].get("environment"):
        out["docker"] = {**out["docker"], "environment": mask_env(out["docker"]["environment"])}
    return out
