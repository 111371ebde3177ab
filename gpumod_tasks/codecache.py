"""The methods ``dataclasses`` writes for each class, compiled once instead of at every start.

On Python 3.11 every ``@dataclass`` builds the source text of its ``__init__``, ``__repr__``,
``__eq__``, ``__hash__`` (and a frozen class's ``__setattr__``/``__delattr__``) and compiles it
with ``exec`` while the module is imported: about 1 ms a class here, ~45 ms of the ~50 classes an
``inv status`` imports, most of a short command's own import time.  ``install()`` (called by the
CLI's ``main``, never on import) gives the ``dataclasses`` module an ``exec`` that runs the code
compiled from the very same text, kept in one marshal file per Python build in gpumod's cache
directory (``paths.cache_file``); text it has not seen is compiled as before and the file is
rewritten at exit.  Same text, same compiler: the same functions.  A file that cannot be read, is
not the running user's own or is writable by others is ignored (it holds code), and should a
later Python stop calling ``exec`` by name from ``dataclasses``, nothing changes but the time.
"""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from types import CodeType
from typing import Any

__all__ = ["CodeCache", "install"]

# one file per interpreter build: marshal's format and the bytecode belong to it
FILE_NAME = f"dataclass-code.{sys.implementation.cache_tag}-{sys.hexversion:x}.marshal"
LIMIT = 4096  # entries kept (gpumod has ~90 dataclasses, a handful of methods each)


class CodeCache:
    """Source text -> code object, loaded from ``path`` once and written back when it grew."""

    def __init__(self, path: Path):
        self.path = path
        self.code: dict[str, CodeType] = _read(path)
        self.compiled = 0  # texts compiled in this process (not found in the file)

    def exec(self, source: Any, globals: dict[str, Any] | None = None, locals: Any = None, /) -> None:  # noqa: A002 - exec's own names
        if isinstance(source, str):
            code = self.code.get(source)
            if code is None:
                # as exec() compiles a string: named "<string>", and with no __future__ flags of
                # this module (dataclasses' own frame has none to pass on)
                code = self.code[source] = compile(source, "<string>", "exec", dont_inherit=True)
                self.compiled += 1
            source = code
        builtins.exec(source, globals, locals)

    def flush(self) -> None:
        """Write the file (only when something was compiled), atomically and private to the user."""
        if not self.compiled:
            return
        import marshal

        from .paths import write_cache

        try:
            write_cache(self.path, marshal.dumps(dict(list(self.code.items())[-LIMIT:])))
        except ValueError:  # a code object marshal cannot write: nothing is kept this time
            pass
        self.compiled = 0


def _read(path: Path) -> dict[str, CodeType]:
    import marshal
    import os

    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return {}
            data = marshal.loads(fh.read())
    except (OSError, ValueError, EOFError, TypeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, CodeType)}


_INSTALLED: CodeCache | None = None


def install(path: Path | None = None) -> CodeCache:
    """Route ``dataclasses``' compiling through the cache for the rest of this process (once)."""
    global _INSTALLED
    if _INSTALLED is not None:
        return _INSTALLED
    import atexit
    import dataclasses

    from .paths import cache_file

    cache = CodeCache(path or cache_file(FILE_NAME))
    dataclasses.exec = cache.exec  # type: ignore[attr-defined]
    atexit.register(cache.flush)
    _INSTALLED = cache
    return cache
