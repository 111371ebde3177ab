"""The Python that units written from this machine run: one spelling of it.

``sys.executable`` is whatever name started this process (``.venv/bin/python``, ``python3``,
``python3.11``: one interpreter under several names). A unit carries it, and a unit whose text
changed restarts its service, so two gpumod processes started under different names (the ``inv``
entry point, ``python -m``, the router daemon's unit) must write the same path.
"""

from __future__ import annotations

import os
import sys


def this_python() -> str:
    """``<prefix>/bin/python3`` when that is this interpreter (a venv's or an install's), else
    ``sys.executable``. The venv's own path is kept (not resolved through its symlinks): the venv is
    found from the path the interpreter is started by."""
    for name in ("python3", "python"):
        cand = os.path.join(sys.prefix, "bin", name)
        try:
            if os.path.samefile(cand, sys.executable):
                return cand
        except OSError:
            continue
    return sys.executable
