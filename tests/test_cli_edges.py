"""Edges a new user hits: `TASK --help`, missing extras, --json on refusals, piped output, validation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli

REPO = Path(__file__).resolve().parent.parent


def task_names() -> list[str]:
    code, out, err = run_cli(["--list"])
    assert code == 0, err
    names = [m.group(1) for m in re.finditer(r"^  (\S+)", out, re.M)]
    assert len(names) > 30 and "mode.switch" in names and "status" in names
    return names


def test_every_task_answers_help_after_its_name(sim_host):
    for name in task_names():
        code, want, err = run_cli(["--help", name])
        assert code == 0 and want.startswith(f"Usage: inv [--core-opts] {name} "), (name, want, err)
        for flag in ("--help", "-h"):
            code, out, err = run_cli([name, flag])
            assert (code, out, err) == (0, want, ""), (name, flag, code, out, err)


def test_help_wins_over_a_positional_and_after_other_flags(sim_host):
    code, out, err = run_cli(["service.logs", "emb", "--help"])
    assert code == 0 and "Tail of a service's journal" in out
    code, out, err = run_cli(["mode.switch", "--dry-run", "-h"])
    assert code == 0 and "--rollback" in out and "Show this task's help" not in out
    # nothing ran: no mode recorded, no switch attempted
    assert not (sim_host.state / "mode.json").exists()
    # positionals still work without --help
    code, out, err = run_cli(["mode.switch", "rag", "--dry-run"])
    assert code == 0 and "plan: switch to rag" in out, err
    code, out, err = run_cli(["mode.switch", "--name", "nosuch"])
    assert code == 2 and "unknown mode 'nosuch'" in err


BLOCKER = textwrap.dedent("""
    import sys
    BLOCK = set(sys.argv[1].split(","))

    class Blocker:  # an uninstalled package, as after `pip install -e .` without its extra
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCK):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    from gpumod_tasks.program import main
    sys.argv = ["inv", *sys.argv[2:]]
    main()
""")


def run_without(modules: str, *argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", BLOCKER, modules, *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("blocked", "argv", "extra"), [
    ("uvicorn", ["router.serve", "--port", "1"], "router"),
    ("starlette", ["router.serve", "--port", "1"], "router"),
    ("mcp", ["mcp.serve"], "mcp"),
    ("gguf", ["sim.tiny-gguf", "--dir", "{tmp}"], "models"),
])
def test_a_missing_extra_is_one_line_naming_it(sim_host, tmp_path, blocked, argv, extra):
    r = run_without(blocked, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"'{blocked}'" in lines[0] and f"pip install -e '.[{extra}]'" in lines[0] and argv[0] in lines[0]


def test_an_unrelated_missing_module_is_still_a_traceback(sim_host):
    # a bug (a module of our own missing) must not be disguised as a missing extra
    r = run_without("gpumod_tasks.fit", "mode.simulate", "--name", "rag")
    assert r.returncode != 0 and "Traceback" in r.stderr and "pip install" not in r.stderr


def test_router_packages_are_core_dependencies():
    import tomllib

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(meta["dependencies"])
    for pkg in ("starlette", "uvicorn", "httptools", "prometheus-client"):
        assert pkg in core
    assert meta["optional-dependencies"]["router"] == []
