"""The facts a local host reads in-process print exactly what their shell scripts print, for every
state a unit's files can be in (the scripts stay the truth for remote boxes and namespaces)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from gpumod_tasks.facts.here import supervisor_state_text, unit_files_text
from gpumod_tasks.facts.unitfiles import parse_unit_files, unit_files_argv
from gpumod_tasks.service_manager import Supervisor


def _start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rpartition(") ")[2].split()[19]


def _boot() -> str:
    with open("/proc/sys/kernel/random/boot_id") as fh:
        return fh.read().strip()


def test_supervisor_state_read_here_is_the_scripts_output_for_every_kind_of_unit(tmp_path):
    root = tmp_path / "supervisor"
    (root / "units").mkdir(parents=True)
    (root / "run").mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zombie = subprocess.Popen(["true"])
    time.sleep(0.2)  # the zombie exits (unreaped)
    try:
        def unit(name: str, pid: str | None = None, ident: str | None = None, rc: str | None = None,
                 stopped: bool = False, installed: bool = True) -> str:
            u = f"gpumod-{name}.service"
            if installed:
                (root / "units" / f"{u}.sh").write_text("#!/bin/sh\n")
            if pid is not None:
                (root / "run" / f"{u}.pid").write_text(pid)
            if ident is not None:
                (root / "run" / f"{u}.pid.id").write_text(ident)
            if rc is not None:
                (root / "run" / f"{u}.rc").write_text(rc)
            if stopped:
                (root / "run" / f"{u}.stopped").write_text("")
            return u

        me = f"{live.pid}\n"
        units = [
            unit("running", me, f"{_start_time(live.pid)} {_boot()}\n"),
            unit("reused", me, f"1 {_boot()}\n"),
            unit("otherboot", me, f"{_start_time(live.pid)} 00000000-0000-0000-0000-000000000000\n"),
            unit("zombie", f"{zombie.pid}\n", f"{_start_time(zombie.pid)} {_boot()}\n", rc="0\n"),
            unit("gone-failed", "999999999\n", "5 b\n", rc="3\n"),
            unit("gone-stopped", "999999999\n", "5 b\n", rc="143\n", stopped=True),
            unit("gone-empty-rc", "999999999\n", "5 b\n", rc=""),
            unit("never-started"),
            unit("not-installed", installed=False),
            unit("rc-only", rc="1\n"),
        ]
        sv = Supervisor.__new__(Supervisor)
        sv.root = str(root)
        script = subprocess.run(sv.state_argv(units), capture_output=True, text=True, check=True).stdout
        assert supervisor_state_text(str(root), units) == script
        assert "ActiveState=active" in script and "Result=exit-code" in script  # the cases do differ

        for garbled in ("", "12 13\n", "0123\n", "abc\n"):
            g = unit("garbled", garbled, "5 b\n")
            assert supervisor_state_text(str(root), [*units, g]) is None, garbled  # the script's slow path
        (root / "run" / "gpumod-garbled.service.pid").write_text(me)
        (root / "run" / "gpumod-garbled.service.pid.id").write_text("x y z\n")
        assert supervisor_state_text(str(root), [g]) is None
    finally:
        live.kill()
        live.wait()
        zombie.wait()


def test_unit_files_read_here_parse_as_the_scripts_output(tmp_path):
    d = tmp_path / "units"
    d.mkdir()
    (d / "a.service").write_text("[Unit]\nDescription=a\n")
    (d / "b.service").write_text("")
    os.utime(d / "b.service", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    (d / "dir.service").mkdir()
    units = ["a.service", "b.service", "missing.service", "dir.service"]
    script, _ = parse_unit_files(subprocess.run(unit_files_argv(str(d), "", units), capture_output=True, text=True,
                                                check=True).stdout, units)
    here, boot = parse_unit_files(unit_files_text(str(d), "", units), units)
    assert here == script
    assert here["b.service"].mtime == 1_700_000_000.123456789 and here["a.service"].installed
    assert not here["missing.service"].installed and not here["dir.service"].installed
    with open("/proc/uptime") as fh:
        assert abs(boot - (time.time() - float(fh.read().split()[0]))) < 1.0
