#!/usr/bin/env python3
"""gpumod's own time per whole CLI command, on a simulated host whose stand-ins have no delays.

    .venv/bin/python scripts/bench_cli.py [--runs 7] [--repo CHECKOUT]

The bundled catalog (ports moved to free ones) plus 20 small services, on a simulated host with
``sim_timings: {load_s: 0, wake_l1_s: 0, wake_l2_s: 0, release_lag_s: 0}``: every millisecond is
gpumod's own (interpreter start, imports, reading the catalog, observing, planning, acting).
Each command is a fresh process, as a user runs it; medians of ``--runs``.  code -> rag is also
shown less the 50 ms in which the llama.cpp router stand-in reaps the unloaded model (its one
delay that ``sim_timings`` does not set; ``bench_router_swap.py`` takes it off the same way).
Two columns:

- ``source``: ``PYTHONDONTWRITEBYTECODE=1`` and no ``__pycache__`` for gpumod's own modules, as an
  editable checkout on these machines runs (every module is compiled at every start);
- ``compiled``: every module byte-compiled, as a user's ``pip install`` runs: gpumod's modules by
  ``python -m compileall`` and the rest by the untimed set-up commands (run with Invoke's
  ``--write-pyc``), all into a temporary ``PYTHONPYCACHEPREFIX`` (nothing is written into the
  checkout).

(The installed packages are byte-compiled in the source column too, as pip leaves them.)

Then the same work as one sequence (status, switch -> code, -> rag, no-op, -> code, -> blank),
summed, in each column. ``--repo A --repo B`` measures two checkouts (before and after a change),
each on its own simulated host, their runs interleaved so the machine's noise hits both alike.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import free_ports

HERE = Path(__file__).resolve().parent.parent
ZERO = "{load_s: 0, wake_l1_s: 0, wake_l2_s: 0, release_lag_s: 0}"


def setup(repo: Path, home: Path, avoid: set[int] | None = None) -> set[int]:
    """The bundled catalog with every port moved to a free one (none of ``avoid``), 20 small
    services, zero delays; returns the ports it took."""
    shutil.copytree(repo / "templates", home / "templates")
    shutil.copytree(repo / "modes", home / "modes")
    texts = {p: p.read_text() for p in (repo / "presets").rglob("*.yaml")}
    olds = sorted({int(m) for t in texts.values() for m in re.findall(r"^port: (\d+)", t, re.M)})
    ports = free_ports(len(olds) + 20)
    while avoid and avoid & set(ports):
        ports = free_ports(len(olds) + 20)
    new, spare = dict(zip(olds, ports)), ports[len(olds):]
    for p, t in texts.items():
        out = home / "presets" / p.relative_to(repo / "presets")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(re.sub(r"\b(\d{4,5})\b", lambda m: str(new.get(int(m.group(1)), m.group(1))), t))
    (home / "presets" / "bench").mkdir()
    for i, port in enumerate(spare[:20]):
        (home / "presets" / "bench" / f"s{i:02d}.yaml").write_text(
            f"id: s{i:02d}\nname: s{i:02d}\ndriver: vllm\nport: {port}\nvram_mb: 300\nmodel_size_mb: 100\n"
            "supports_sleep: true\nsleep_mode: l1\nsleep_vram_mb: 100\n")
    (home / "modes" / "twenty.yaml").write_text(
        f"id: twenty\nname: twenty\nservices: [{', '.join(f's{i:02d}' for i in range(20))}]\n")
    (home / "modes" / "two.yaml").write_text("id: two\nname: two\nservices: [s00, s01]\n")
    (home / "inventory").mkdir()
    (home / "inventory" / "hosts.yaml").write_text(
        "hosts:\n  local:\n    connection: local\n    sim: true\n"
        "    gpu: {name: NVIDIA GeForce RTX 4090, total_mb: 24564}\n"
        f"    default_mode: rag\n    sim_timings: {ZERO}\n")
    return set(ports)


class Cli:
    """One checkout in one column; ``setup_flags`` go before the arguments of untimed set-up commands."""

    def __init__(self, repo: Path, env: dict[str, str], setup_flags: tuple[str, ...] = ()):
        self.repo, self.env, self.setup_flags = repo, env, setup_flags

    def setup(self, *args: str) -> float:
        return self(*self.setup_flags, *args)

    def __call__(self, *args: str) -> float:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "gpumod_tasks.program", *args], capture_output=True,
                           text=True, env=self.env, cwd=self.env["GPUMOD_HOME"])
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"inv {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
        return dt


# the llama.cpp router stand-in reaps an unloaded model 50 ms after /models/unload, as the real
# router's child takes to exit (sim/llamacpp.py); code -> rag waits for that VRAM
REAP_S = 0.05
ROWS = ["inv status (2 services)", "inv status (20 services)", "  ratio 20 / 2",
        "no-op mode.switch --name rag", "warm switch code -> rag", "  less the stand-in's 50 ms reap",
        "warm switch rag -> code", "inv --list",
        "same work: status, -> code, -> rag, no-op, -> code, -> blank"]


def measure(clis: dict[str, Cli], runs: int) -> dict[str, dict[str, float]]:
    """Every command in every column given, interleaved run by run."""
    t: dict[str, dict[str, list[float]]] = {c: {r: [] for r in ROWS} for c in clis}

    def one(*args: str) -> None:  # a set-up step, on every column's own host
        for inv in clis.values():
            inv.setup(*args)

    def each(row: str, *args: str) -> None:
        for col, inv in clis.items():
            t[col][row].append(inv(*args))

    for m in ("code", "rag", "code"):  # warm: both modes' services exist (asleep or awake)
        one("mode.switch", "--name", m)
    one("status")
    one("--list")
    one("mode.switch", "--name", "code")
    for _ in range(runs):
        for col, inv in clis.items():
            t[col]["warm switch code -> rag"].append(inv("mode.switch", "--name", "rag"))
            t[col]["warm switch rag -> code"].append(inv("mode.switch", "--name", "code"))
    one("mode.switch", "--name", "rag")
    for _ in range(runs):
        each("no-op mode.switch --name rag", "mode.switch", "--name", "rag")
    one("mode.switch", "--name", "two")
    for _ in range(runs):
        each("inv status (2 services)", "status")
    one("mode.switch", "--name", "twenty")
    for _ in range(runs):
        each("inv status (20 services)", "status")
    for _ in range(runs):
        each("inv --list", "--list")
    for _ in range(max(1, runs // 2)):
        one("mode.switch", "--name", "blank")
        one("sim.reset")
        one("mode.switch", "--name", "rag")
        for col, inv in clis.items():
            t[col][ROWS[-1]].append(sum(inv(*a) for a in (
                ("status",), ("mode.switch", "--name", "code"), ("mode.switch", "--name", "rag"),
                ("mode.switch", "--name", "rag"), ("mode.switch", "--name", "code"), ("mode.switch", "--name", "blank"))))
    out = {}
    for col in clis:
        med = {r: statistics.median(v) for r, v in t[col].items() if v}
        med["  ratio 20 / 2"] = med["inv status (20 services)"] / med["inv status (2 services)"]
        med["  less the stand-in's 50 ms reap"] = med["warm switch code -> rag"] - REAP_S
        out[col] = med
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--repo", type=Path, action="append",
                    help="a checkout to measure (default: this one); given twice, both are measured interleaved")
    a = ap.parse_args()
    repos = [r.resolve() for r in (a.repo or [HERE])]
    names = [r.name for r in repos] if len(repos) > 1 else [""]

    def uncompile() -> None:  # the source column must find no byte-code of gpumod's own (derived, gitignored)
        for repo in repos:
            for d in (repo / "gpumod_tasks").rglob("__pycache__"):
                shutil.rmtree(d, ignore_errors=True)

    uncompile()
    tmp = Path(tempfile.mkdtemp(prefix="gpumod-bench-cli-"))
    envs, taken = [], set()
    for i, repo in enumerate(repos):  # each checkout drives its own simulated host
        home = tmp / f"home{i}"
        taken |= setup(repo, home, taken)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "GPUMOD_"))}
        base.update(GPUMOD_HOME=str(home), GPUMOD_STATE_DIR=str(tmp / f"state{i}"), PYTHONPATH=str(repo), COLUMNS="120")
        envs.append(base)
    cols: dict[str, dict[str, float]] = {}
    try:
        cols.update(measure({f"{n} source".strip(): Cli(r, {**e, "PYTHONDONTWRITEBYTECODE": "1"})
                             for n, r, e in zip(names, repos, envs)}, a.runs))
        compiled = []
        for i, (repo, e) in enumerate(zip(repos, envs)):
            # Invoke turns writing byte-code off unless --write-pyc: the untimed set-up commands
            # write what they import (stdlib and packages too) into the prefix
            ce = {**e, "PYTHONPYCACHEPREFIX": str(tmp / f"pycache{i}")}
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(repo / "gpumod_tasks")], env=ce, check=True)
            compiled.append(ce)
        cols.update(measure({f"{n} compiled".strip(): Cli(r, e, ("--write-pyc",))
                             for n, r, e in zip(names, repos, compiled)}, a.runs))
    finally:
        for e in envs:
            subprocess.run([sys.executable, "-m", "gpumod_tasks.program", "sim.reset"], env=e,
                           cwd=e["GPUMOD_HOME"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"== {', '.join(map(str, repos))}: whole commands, zero-delay stand-ins {ZERO}, medians of {a.runs} runs (ms)")
    print(f"{'':<62}" + "".join(f" {c:>16}" for c in cols))
    for row in ROWS:
        fmt = (lambda v: f"{v:>16.2f}") if row.strip().startswith("ratio") else (lambda v: f"{v * 1000:>16.0f}")
        print(f"{row:<62}" + "".join(" " + fmt(cols[c][row]) for c in cols))


if __name__ == "__main__":
    sys.exit(main())
