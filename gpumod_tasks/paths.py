"""Where things live: the project (catalog, templates, inventory) and the controller's own state."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> str:
    """``$GPUMOD_HOME``; else the current directory when it holds a catalog; else this checkout."""
    env = os.environ.get("GPUMOD_HOME")
    if env:
        return env
    cwd = Path.cwd()
    if (cwd / "presets").is_dir() and (cwd / "modes").is_dir():
        return str(cwd)
    return str(Path(__file__).resolve().parent.parent)


def inventory_path(root: str) -> str:
    return os.environ.get("GPUMOD_INVENTORY") or str(Path(root) / "inventory" / "hosts.yaml")


def local_state_override() -> str | None:
    """``$GPUMOD_STATE_DIR`` relocates the local host's state (tests, demos, several sandboxes)."""
    return os.environ.get("GPUMOD_STATE_DIR") or None


def controller_dir() -> str:
    """The controller's own files (switch history): next to the local state."""
    d = os.environ.get("GPUMOD_STATE_DIR") or os.path.expanduser("~/.local/state/gpumod")
    return d


def cache_file(name: str) -> Path:
    """A file of gpumod's own caches: ``$GPUMOD_STATE_DIR/cache`` (tests, demos, sandboxes), else
    ``$XDG_CACHE_HOME/gpumod`` or ``~/.cache/gpumod``.  Losing one only costs time."""
    base = os.environ.get("GPUMOD_STATE_DIR")
    if base:
        return Path(base) / "cache" / name
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpumod" / name


def write_cache(path: Path, data: bytes) -> None:
    """Replace cache file ``path`` with ``data`` at once (a reader sees the old file or the new one,
    never half of either), readable by the user alone; a cache that cannot be written is only
    slower next time, so an OSError is dropped."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError:
        pass
