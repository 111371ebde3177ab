"""What a remote simulated box receives: the whole simulator package, and nothing it cannot run
with a bare python3 (no gpumod, no site-packages)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gpumod_tasks.simhost import REMOTE_PACKAGE, SIM_PACKAGE, sim_package_files


def test_every_module_of_the_sim_package_is_shipped():
    files = sim_package_files()
    on_disk = {p.relative_to(SIM_PACKAGE).as_posix() for p in SIM_PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert set(files) == on_disk and {"__init__.py", "meter.py", "server.py", "nvidia_smi.py", "ledger.py"} <= set(files)


@pytest.mark.skipif(not shutil.which("python3"), reason="no system python3")
def test_the_shipped_package_imports_on_a_bare_python(tmp_path: Path):
    pkg = tmp_path / REMOTE_PACKAGE
    for rel, text in sim_package_files().items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    mods = sorted(f"{REMOTE_PACKAGE}." + rel[:-3].replace("/", ".").removesuffix(".__init__")
                  for rel in sim_package_files() if rel != "__init__.py")
    code = f"import sys, importlib; sys.path.insert(0, {str(tmp_path)!r})\nfor m in {mods!r}: importlib.import_module(m)\n" \
           "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('gpumod_tasks', 'httpx', 'yaml', 'invoke', 'fabric'))\n" \
           "assert not bad, bad\n"
    r = subprocess.run(["python3", "-S", "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
