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


def test_parsing_with_only_the_named_tasks_reads_the_command_line_as_before(sim_host):
    # a task name given as another's flag value, two tasks on one line, an alias-free unknown word
    code, out, err = run_cli(["mode.switch", "--name", "status", "--dry-run"])
    assert code == 2 and "unknown mode 'status'" in err, (out, err)
    code, out, err = run_cli(["mode.list", "mode.status"])
    assert code == 0 and "current mode" in out and "services" in out, (out, err)
    code, out, err = run_cli(["status", "nosuch"])
    assert code == 1 and "No idea what 'nosuch' is!" in err, (out, err)


@pytest.mark.parametrize("argv", [["--list"], ["--version"], ["--help", "mode.switch"]])
def test_a_reader_that_goes_away_gets_no_traceback(argv):
    # `inv --list | head -0`: the pipe's reader is gone before anything is written; the program
    # ends quietly with 141 (as a shell reports SIGPIPE), also where Invoke ends it with sys.exit
    r, w = os.pipe()
    os.close(r)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    try:
        p = subprocess.run([sys.executable, "-m", "gpumod_tasks.program", *argv], cwd=REPO, stdout=w,
                           stderr=subprocess.PIPE, text=True, env={**env, "PYTHONPATH": str(REPO)}, timeout=60)
    finally:
        os.close(w)
    assert p.returncode == 141 and p.stderr == "", (p.returncode, p.stderr)


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


def run_piped(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real program in a fresh interpreter, its stdout a pipe (not a terminal)."""
    e = {**os.environ, "PYTHONPATH": str(REPO), **env}
    e.pop("COLUMNS", None)
    e.update(env)
    return subprocess.run([sys.executable, "-m", "gpumod_tasks.program", *argv], cwd=REPO, env=e, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)


LONG_IDS = ("vllm-embedding-multilingual-large-instruct", "vllm-embedding-multilingual-large-reranker")


@pytest.mark.parametrize("columns", [None, "80"])
def test_piped_output_has_whole_ids_and_unbroken_lines(sim_host, columns):
    for i, sid in enumerate(LONG_IDS):
        sim_host.write_preset("embedding", sid, f"id: {sid}\nname: A long descriptive name for the {sid} service, version {i}\n"
                                                f"driver: vllm\nport: {30000 + i}\nvram_mb: 1000\nsupports_sleep: true\nsleep_mode: l1\n")
    env = {"COLUMNS": columns} if columns else {}
    r = run_piped("service.list", **env)
    assert r.returncode == 0, r.stderr
    rows = [ln for ln in r.stdout.splitlines() if "multilingual" in ln]
    assert len(rows) == 2, r.stdout
    for sid, row in zip(LONG_IDS, rows):
        assert f" {sid} " in row and "version" in row and "…" not in row, row
    r = run_piped("status", **env)
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("host local: simulated GPU") and first.rstrip().endswith("supervisor"), r.stdout[:300]
    assert "…" not in r.stdout


def test_piped_template_diff_is_a_diff_patch_applies(sim_host, tmp_path):
    assert sim_host.inv("template.install-all")[0] == 0
    units = sim_host.state / "supervisor" / "units"
    installed = tmp_path / "tree"
    installed.mkdir()
    for f in units.glob("*.sh"):
        (installed / f.name[:-3]).write_text(f.read_text())
    p = sim_host.root / "presets" / "embedding" / "emb.yaml"
    p.write_text(p.read_text().replace("vram_mb: 2500", "vram_mb: 2600"))
    r = run_piped("template.diff")
    assert r.returncode == 1, r.stderr
    changed = [ln for ln in r.stdout.splitlines() if ln.startswith("+exec ")]
    assert len(changed) == 1 and len(changed[0]) > 200 and changed[0].endswith("--enable-sleep-mode"), r.stdout
    diff = tmp_path / "units.diff"
    diff.write_text(r.stdout)
    dry = subprocess.run(["patch", "-p1", "--dry-run", "-d", str(installed), "-i", str(diff)], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    subprocess.run(["patch", "-p1", "-s", "-d", str(installed), "-i", str(diff)], check=True)
    assert sim_host.inv("template.install-all")[0] == 0
    # the patched copy is exactly what install-all then wrote
    for f in units.glob("*.sh"):
        assert (installed / f.name[:-3]).read_text() == f.read_text(), f.name


def mode_rows(out: str) -> dict[str, str]:
    rows = {}
    for ln in out.splitlines():
        ln = ln.strip()
        cells = [c.strip() for c in ln[1:-1].split("│")]
        if ln.startswith("│") and len(cells) == 5:
            rows[cells[1]] = cells[0]
    return rows


def test_mode_list_marks_the_recorded_mode(sim_host):
    code, out, err = sim_host.inv("mode.list")
    assert code == 0, err
    marks = mode_rows(out)
    assert set(marks) >= {"blank", "rag", "code", "chat", "speak"} and set(marks.values()) == {""}, out
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    code, out, err = sim_host.inv("mode.list")
    assert code == 0 and "current" in out
    assert {k: v for k, v in mode_rows(out).items() if v} == {"rag": "*"}, out
    code, out, err = sim_host.inv("mode.list", "--json")
    assert code == 0 and out.endswith("}\n]\n")
    assert {m["id"] for m in json.loads(out) if m["current"]} == {"rag"}
    assert sim_host.inv("mode.switch", "--name", "blank")[0] == 0
    code, out, err = sim_host.inv("mode.list", "--json")
    assert {m["id"] for m in json.loads(out) if m["current"]} == {"blank"}


def test_sleep_level_is_checked_against_the_service(sim_host):
    assert sim_host.inv("mode.switch", "--name", "code")[0] == 0  # emb (vLLM, L1) and router (llama.cpp router) run
    for bad in ("abc", "3", "0", "-1"):
        code, out, err = sim_host.inv("service.sleep", "emb", "--level", bad)
        assert code == 2 and "--level must be 1 or 2" in err and repr(bad) in err and "Traceback" not in err, (bad, err)
    code, out, err = sim_host.inv("service.sleep", "router", "--level", "1")
    assert code == 2 and "llama.cpp router" in err and "leave out --level" in err
    code, out, err = sim_host.inv("service.status", "emb", "--json")
    assert json.loads(out)["state"] == "running"  # the refusals touched nothing
    code, out, err = sim_host.inv("service.sleep", "emb", "--level", "2")
    assert code == 0 and "emb asleep (L2)" in out, err
    code, out, err = sim_host.inv("service.status", "emb", "--json")
    assert (json.loads(out)["state"], json.loads(out)["sleep_level"]) == ("sleeping", 2)
    code, out, err = sim_host.inv("service.sleep", "router")
    assert code == 0 and "unloaded from its router" in out, err
    assert sim_host.inv("mode.switch", "--name", "blank")[0] == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--gpu-mb", "-5"], "--gpu-mb must be a positive whole number of MB, not '-5'"),
    (["--gpu-mb", "0"], "--gpu-mb must be a positive whole number of MB, not '0'"),
    (["--gpu-mb", "lots"], "--gpu-mb must be a positive whole number of MB, not 'lots'"),
    (["--reserve-mb", "-5"], "--reserve-mb must be a whole number of MB, 0 or more, not '-5'"),
    (["--gpu-mb", "4000", "--reserve-mb", "4000"], "the reserve (4000 MB) must be less than the GPU size (4000 MB)"),
])
def test_simulate_refuses_impossible_sizes(sim_host, argv, message):
    code, out, err = sim_host.inv("mode.simulate", "--name", "rag", *argv)
    assert (code, out) == (2, "") and message in err, (code, out, err)


def test_simulate_takes_a_given_gpu_size_and_reserve(sim_host):
    code, out, err = sim_host.inv("mode.simulate", "--name", "rag", "--gpu-mb", "8000", "--reserve-mb", "0")
    assert code == 0 and out.startswith("Fits: 7500 / 8000 MB (headroom: 500 MB)\n") and "?" not in out, out + err
    code, out, err = sim_host.inv("mode.simulate", "--name", "rag", "--gpu-mb", "7000")
    assert code == 1 and "7500/7000 MB" in out and "?" not in out


def test_a_bad_number_names_its_flag(sim_host):
    code, out, err = sim_host.inv("service.logs", "emb", "--lines", "many")
    assert code == 2 and err.strip() == "error: --lines takes a whole number, not 'many'"
    code, out, err = sim_host.inv("status", "--watch", "--interval=soon")
    assert code == 2 and err.strip() == "error: --interval takes a number, not 'soon'"


def switch_json(*argv: str) -> tuple[int, dict, str]:
    code, out, err = run_cli(["mode.switch", "--json", *argv])
    assert out.endswith("}\n"), (code, out, err)
    return code, json.loads(out), err


def test_switch_json_on_refusals_and_failures(sim_host):
    import fcntl

    from gpumod_tasks.lock import lock_path

    h = sim_host
    code, d, err = switch_json("--name", "nosuch")
    assert code == 2 and (d["ok"], d["kind"], d["exit_code"]) == (False, "UnknownName", 2)
    assert "unknown mode 'nosuch'" in d["error"] and d["state"][0] == "now on the GPU host:"
    assert any(ln.strip().startswith("stopped: ") for ln in d["state"])

    h.write_mode("huge", ["emb", "doc", "big", "router", "asr"])  # 25500 MB > 24564 - 512
    for extra in ([], ["--dry-run"]):
        code, d, err = switch_json("--name", "huge", *extra)
        assert code == 1 and (d["ok"], d["kind"], d["mode"]) == (False, "PlanRefused", "huge"), d
        assert "does not fit" in d["error"] and any("time-share" in ln for ln in d["details"]) and d["state"]

    assert switch_json("--name", "rag")[0] == 0
    fd = os.open(lock_path(str(h.state)), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another switch holds the host lock
        code, d, err = switch_json("--name", "code", "--no-wait")
    finally:
        os.close(fd)
    assert code == 3 and (d["ok"], d["kind"]) == (False, "LockBusy") and "lock" in d["error"]
    assert any("running: doc, emb" in ln for ln in d["state"]), d["state"]

    port = h.ports["asr"]  # a health gate that never passes: the switch fails midway
    h.write_preset("speech", "asr", f"id: asr\nname: asr\ndriver: fastapi\nport: {port}\nvram_mb: 3000\nstartup_timeout: 2\n"
                                     "health_endpoint: /does-not-exist\nunit_vars:\n  command: [python, -m, asr]\n")
    code, d, err = switch_json("--name", "speak")
    assert code == 1 and (d["ok"], d["kind"], d["mode"], d["previous_mode"]) == (False, "SwitchFailed", "speak", "rag")
    assert "health gate failed for asr" in d["error"]
    failed = [s for s in d["steps"] if s["status"] == "failed"]
    assert len(failed) == 1 and "asr" in failed[0]["step"]
    assert d["state"][0] == "now on the GPU host:" and d["state"] == d["details"]
    assert switch_json("--name", "blank")[0] == 0


def test_every_json_output_is_one_document_ending_in_a_newline(sim_host):
    assert run_cli(["mode.switch", "--name", "rag"])[0] == 0
    for argv in (["mode.list"], ["mode.show", "rag"], ["mode.simulate", "--name", "rag"], ["mode.status"], ["mode.verify"],
                 ["mode.switch", "--name", "rag", "--dry-run"], ["mode.switch", "--name", "rag"], ["service.list"],
                 ["service.show", "emb"], ["service.status", "emb"], ["status"], ["gpu.status"],
                 ["doctor.gpu"], ["doctor.presets"], ["doctor.all"], ["mode.switch", "--name", "blank"]):
        code, out, err = run_cli([*argv, "--json"])
        assert out.endswith("\n") and not out.endswith("\n\n"), (argv, out[-50:])
        json.loads(out)


def doctor_json(*argv: str) -> tuple[int, dict]:
    code, out, err = run_cli([*argv, "--json"])
    assert out.endswith("}\n"), (argv, code, out, err)
    d = json.loads(out)
    assert set(d) == {"host", "ok", "checks"} and all(set(ch) == {"name", "ok", "detail", "fix"} for ch in d["checks"])
    return code, d


def test_doctor_checks_print_json_with_the_same_exit_code(sim_host):
    for task in ("doctor.gpu", "doctor.presets", "doctor.sysctl", "doctor.oom-protection", "doctor.units", "doctor.all"):
        plain = run_cli([task])[0]
        code, d = doctor_json(task)
        assert code == plain and d["ok"] == (code == 0) and d["host"] == "local", (task, d)
    code, d = doctor_json("doctor.gpu")
    assert code == 0 and d["checks"] == [{"name": "gpu", "ok": True, "fix": "",
                                          "detail": d["checks"][0]["detail"]}] and "RTX 4090" in d["checks"][0]["detail"]
    port = sim_host.ports["router"]
    sim_host.write_preset("code", "gemma", f"id: gemma\nname: gemma\ndriver: llamacpp\nport: {port}\nvram_mb: 9000\n"
                                           "model_path: /m/gemma.gguf\nunit_vars:\n  parallel: 4\n  extra_args: [--swa-full]\n")
    code, d = doctor_json("doctor.presets")
    assert code == 1 and not d["ok"] and d["checks"][0]["name"] == "presets" and "--swa-full" in d["checks"][0]["detail"]
    code, d = doctor_json("doctor.all")
    names = [ch["name"] for ch in d["checks"]]
    assert code == 1 and {"gpu", "sysctl", "oom-protection", "presets", "units"} <= set(names)
    assert [ch["ok"] for ch in d["checks"] if ch["name"] == "presets"] == [False]


def test_ids_stay_whole_on_a_narrow_terminal(repo_catalog):
    import io

    from rich.console import Console

    from gpumod_tasks.ui import modes_table, presets_table

    for width in (80, 60):
        for table, col, ids in ((presets_table(list(repo_catalog.presets.values())), 1, repo_catalog.presets),
                                (modes_table(repo_catalog, None), 2, repo_catalog.modes)):
            buf = io.StringIO()
            Console(file=buf, width=width, force_terminal=True, color_system=None).print(table)
            cells = [ln.split("│")[col].strip() for ln in buf.getvalue().splitlines() if ln.startswith("│")]
            for sid in ids:
                assert sid in cells, (width, sid, buf.getvalue())
