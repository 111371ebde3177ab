"""What a command imports: only what it does (each heavy module costs every command its import
time), and the placeholders Invoke is imported with never change what Invoke does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HEAVY = ("httpx", "httpcore", "trio", "anyio", "sqlite3", "tenacity", "jinja2", "paramiko", "fabric",
         "unittest.mock", "asyncio", "invoke.vendor.yaml",
         # the standard library's slower ones that no read needs: a temporary file, a uuid, a diff, a resolver call
         "tempfile", "uuid", "difflib", "encodings.idna")


def _run_in_fresh_interpreter(argv: list[str], env: dict[str, str], cwd: Path) -> list[str]:
    code = ("import sys\nfrom gpumod_tasks.program import make_program\n"
            f"try:\n make_program().run({['inv', *argv]!r})\nexcept SystemExit as e:\n assert not e.code, e.code\n"
            f"print('IMPORTED:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
                       env={**env, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr + r.stdout
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("IMPORTED:"))
    return [m for m in line.removeprefix("IMPORTED:").split(",") if m]


def test_status_and_a_no_op_switch_on_a_local_host_import_nothing_heavy(sim_host):
    h = sim_host
    assert h.inv("mode.switch", "--name", "chat")[0] == 0
    env = dict(os.environ)
    assert _run_in_fresh_interpreter(["status"], env, h.root) == []
    # a no-op switch changed nothing: not even the history (sqlite3) is opened
    assert _run_in_fresh_interpreter(["mode.switch", "--name", "chat"], env, h.root) == []


def test_list_imports_nothing_heavy():
    assert _run_in_fresh_interpreter(["--list"], dict(os.environ), REPO) == []


def test_invoke_placeholders_are_gone_and_its_features_still_work(tmp_path):
    code = ("import sys, io\nimport gpumod_tasks.program\n"
            "assert 'unittest.mock' not in sys.modules and 'invoke.vendor.yaml' not in sys.modules\n"
            "from invoke import MockContext\nimport invoke.util\n"
            "c = MockContext(run={'ls': True})\nassert c.run('ls').ok and c.run.call_count == 1\n"
            "import unittest.mock\nassert isinstance(c.run, unittest.mock.Mock)\n"
            "assert invoke.util.yaml.safe_load(io.StringIO('a: [1, 2]')) == {'a': [1, 2]}\n"
            "import invoke.vendor.yaml\nassert hasattr(invoke.vendor.yaml, 'YAMLError')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    # a user's Invoke config file is still read (with the real YAML loader: a broken one says where)
    (tmp_path / ".invoke.yaml").write_text("tasks: [unclosed\n")
    r = subprocess.run([sys.executable, "-m", "gpumod_tasks.program", "--list"], capture_output=True, text=True,
                       timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path)})
    assert r.returncode != 0 and ".invoke.yaml" in r.stderr + r.stdout


def test_the_collector_is_off_for_a_short_command_only(monkeypatch):
    import gc
    import time

    from gpumod_tasks import program

    monkeypatch.setattr(program, "GC_DEFER_S", 0.1)
    assert gc.isenabled()
    try:
        program._defer_gc()
        assert not gc.isenabled(), "off while the command starts"
        deadline = time.monotonic() + 5
        while not gc.isenabled() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gc.isenabled(), "a command still running collects again"
    finally:
        gc.enable()
