"""Doctor checks: each returns a CheckResult (ok, message, fix) and never changes anything."""

from __future__ import annotations

from typing import Any

from .check import CheckResult
from .errors import GpumodError
from .target import Target
from .venv import check_venv

__all__ = ["FOOTGUNS", "CheckResult", "check_all", "check_footprints", "check_gpu", "check_oom_protection", "check_presets", "check_sysctl",
           "check_units", "check_venv", "footguns", "print_result", "print_table"]

# Flags known to inflate VRAM far beyond a preset's figure.
FOOTGUNS = {
    "--swa-full": "full-size sliding-window KV cache: on multi-slot Gemma presets this multiplies KV memory by the slot count",
    "--no-kv-offload": "keeps the KV cache off the GPU budget gpumod planned for (host RAM use explodes instead)",
}


def check_gpu(t: Target) -> CheckResult:
    try:
        g = t.gpu()
    except GpumodError as exc:
        return CheckResult("gpu", False, f"gpu PROBLEM: {exc}",
                           "install the NVIDIA driver (nvidia-smi must work), or mark the host `sim: true` in inventory/hosts.yaml")
    p = g.primary
    return CheckResult("gpu", True, f"gpu OK: {p.name}, {p.used_mb} / {p.total_mb} MB used (backend: {g.backend})")


def footguns(t: Target) -> list[str]:
    out = []
    for p in t.catalog.presets.values():
        args = [str(a) for a in p.unit_vars.get("extra_args", [])]
        for flag, why in FOOTGUNS.items():
            if flag in args:
                slots = p.unit_vars.get("parallel")
                extra = f" (parallel {slots})" if slots else ""
                out.append(f"{p.file}: unit_vars.extra_args has {flag}{extra}: {why}")
    return out


def check_presets(t: Target) -> CheckResult:
    # the catalog was validated when loaded (an invalid one never reaches here)
    found = footguns(t)
    if found:
        return CheckResult("presets", False, "presets PROBLEM: " + "; ".join(found), "remove the flag from the preset, or raise vram_mb to what it really takes")
    return CheckResult("presets", True, f"presets OK: {len(t.catalog.presets)} presets and {len(t.catalog.modes)} modes valid, no known footguns")


def check_units(t: Target) -> CheckResult:
    from .unit_install import install_all

    rep = install_all(t, check=True)
    if rep.changed or rep.removed:
        what = ", ".join(rep.changed + rep.removed)
        return CheckResult("units", False, f"units PROBLEM: differ from rendered presets: {what}", "inv template.install-all")
    stale = stale_processes(t)
    if stale:
        return CheckResult("units", False, "units PROBLEM: running processes older than their unit: " + "; ".join(stale),
                           "re-run `inv mode.switch --name MODE` (it restarts them), or `inv service.restart --service-id ID`")
    return CheckResult("units", True, f"units OK: {len(rep.unchanged)} installed units match their presets")


def stale_processes(t: Target) -> list[str]:
    """Running services whose unit file was written after their process started."""
    from .observe import observe
    from .observed import SvcState
    from .pipeline import policy_for
    from .plan.unitfiles import stale_reason

    ids = list(t.catalog.presets)
    seen = observe(t, ids, with_gpu=False, unit_files=sorted({t.catalog.presets[i].unit for i in ids}))
    out = []
    for sid, o in seen.services.items():
        if o.state in (SvcState.RUNNING, SvcState.SLEEPING):
            why = stale_reason(seen, sid, t.catalog.presets[sid].unit, None, policy_for(t))
            if why:
                out.append(f"{sid} ({why.removeprefix('restart: ')})")
    return out


def check_sysctl(t: Target) -> CheckResult:
    from .protect import SYSCTL_FILE, parse_sysctl_dropin, rooted

    want = t.spec.min_free_kbytes
    where = ""
    if t.root_prefix != "/":
        # a staging root is never applied live: check what is installed there
        path = rooted(t, SYSCTL_FILE)
        have = parse_sysctl_dropin(t.host.read_file(path) or "")
        where = f" in {path} (root prefix {t.root_prefix}: not applied live)"
        if have is None:
            return CheckResult("sysctl", False, f"sysctl PROBLEM: no vm.min_free_kbytes drop-in at {path}",
                               "inv host.sysctl")
    else:
        path = f"{t.spec.procfs.rstrip('/')}/sys/vm/min_free_kbytes"
        text = t.host.read_file(path)
        if text is None or not text.strip().isdigit():
            return CheckResult("sysctl", False, f"sysctl PROBLEM: cannot read {path}", "check the host's procfs setting")
        have = int(text.strip())
    if have >= want:
        return CheckResult("sysctl", True, f"sysctl OK: vm.min_free_kbytes={have} kB (>= recommended {want} kB){where}")
    return CheckResult("sysctl", False, f"sysctl PROBLEM: vm.min_free_kbytes={have} kB (< recommended {want} kB){where}: "
                       "a model load can freeze the host when the kernel runs out of free pages",
                       "inv host.sysctl   (or: sudo scripts/install-gpumod-sysctl.sh)")


def check_oom_protection(t: Target) -> CheckResult:
    from .protect import oom_dropin_path, parse_dropin

    want = {"MemoryMin": t.spec.oom_memory_min, "OOMScoreAdjust": str(t.spec.oom_score_adj)}
    problems = []
    for unit in t.spec.oom_protect:
        path = oom_dropin_path(t, unit)
        text = t.host.read_file(path)
        if text is None:
            problems.append(f"{path} missing")
            continue
        have = parse_dropin(text)
        for k, v in want.items():
            if have.get(k) != v:
                problems.append(f"{path}: {k}={have.get(k, '(unset)')}, want {v}")
    if problems:
        return CheckResult("oom-protection", False, "oom-protection PROBLEM: " + "; ".join(problems),
                           "inv host.oom-protection   (or: sudo scripts/oom-protection/install.sh)")
    return CheckResult("oom-protection", True, "oom-protection OK: drop-ins installed and directives correct")


def check_all(t: Target) -> list[CheckResult]:
    out = [check_gpu(t), check_sysctl(t), check_oom_protection(t), check_presets(t), check_units(t), check_footprints(t)]
    if t.spec.fleet is not None:
        out.append(check_fleet(t))
    for p in t.catalog.presets.values():
        if p.compat and p.unit_vars.get("venv") and not t.sim:
            out.append(check_venv(t, p.id))
    return out


def print_result(con: Any, r: CheckResult) -> None:
    con.print(f"[green]{r.message}[/green]" if r.ok else f"[red]{r.message}[/red]")
    if not r.ok and r.fix:
        con.print(f"  fix: {r.fix}")


def print_table(con: Any, results: list[CheckResult]) -> None:
    from rich.table import Table

    tb = Table(title="doctor", title_justify="left")
    for col in ("check", "result", "detail", "fix"):
        tb.add_column(col)
    for r in results:
        tb.add_row(r.name, "[green]OK[/green]" if r.ok else "[red]PROBLEM[/red]", r.message.split(": ", 1)[-1], "" if r.ok else r.fix)
    con.print(tb)


def check_fleet(t: Target) -> CheckResult:
    """The fleet's proxy (``fleet:`` on this host): answering, a master key required, bound where set."""
    import httpx

    from .cli_context import inventory
    from .fleet.listen import bound_as_intended, listening
    from .fleet.settings import LOOPBACK, FleetError, fleet_settings

    if t.spec.fleet is None:
        return CheckResult("fleet", True, f"fleet OK: no fleet: setting on {t.spec.name}")
    try:
        fs = fleet_settings(inventory(), t.spec.name)
    except FleetError as exc:
        return CheckResult("fleet", False, f"fleet PROBLEM: {exc}", "fix fleet: in the inventory")
    fix_unit = "inv template.install-all && inv host.bootstrap   (or run inv fleet.serve)"
    key = ((t.host.read_file(fs.master_key_file) if fs.master_key_file else None) or "").strip()
    if not key:
        return CheckResult("fleet", False, f"fleet PROBLEM: master key not set ({fs.master_key_file or 'no master_key_file'}): "
                           "anyone reaching the port could use every box", "write a random key to fleet.master_key_file")
    procs = "".join(t.host.read_file(f"{t.spec.procfs.rstrip('/')}/net/{f}") or "" for f in ("tcp", "tcp6"))
    have = listening(procs, fs.port)
    if not have:
        return CheckResult("fleet", False, f"fleet PROBLEM: nothing listens on port {fs.port}", fix_unit)
    if not bound_as_intended(have, fs.bind):
        return CheckResult("fleet", False, f"fleet PROBLEM: port {fs.port} is bound on {', '.join(sorted(have))}, intended {fs.bind} only",
                           "restart it through fleet.serve (it passes --host; LiteLLM alone binds 0.0.0.0)")
    base = t.host.base_url(fs.port) if fs.bind in (*LOOPBACK, "0.0.0.0", "::") else fs.url
    client = t.host.http if fs.bind in (*LOOPBACK, "0.0.0.0", "::") else httpx.Client(trust_env=False, timeout=5)
    try:
        anon = client.get(f"{base}/v1/models", timeout=5).status_code
        keyed = client.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    except httpx.HTTPError as exc:
        return CheckResult("fleet", False, f"fleet PROBLEM: the proxy on port {fs.port} does not answer: {exc}", fix_unit)
    if anon != 401:
        return CheckResult("fleet", False, f"fleet PROBLEM: the proxy answers {anon} without the master key", "set fleet.master_key_file and restart")
    if keyed.status_code != 200:
        return CheckResult("fleet", False, f"fleet PROBLEM: the proxy refuses its own master key ({keyed.status_code})",
                           "restart it so it reads fleet.master_key_file again")
    n = len({m.get("id") for m in keyed.json().get("data", [])})
    return CheckResult("fleet", True, f"fleet OK: LiteLLM proxy on {fs.bind}:{fs.port} answers, master key required, "
                       f"{n} models over {len(fs.boxes)} boxes")


# -- measured footprints (doctor.footprints) -----------------------------------------------------

OFF_LIMIT = 0.10  # a declared figure more than this far from the measured one is a problem


def footprint_findings(t: Target) -> list[dict[str, Any]]:
    """Declared figures more than 10 % off the figures learned on ``t`` (with the current preset
    and unit): preset, file, line, key, declared, measured, runs. A ``sleep_vram_mb`` the preset
    does not declare (its engine's default applies) points at its ``vram_mb`` line."""
    from .catalog.model import SleepMode
    from .learn import digests, off_by, read_store

    fp = read_store(t)
    ids = sorted(fp.services() & set(t.catalog.presets))
    if not ids:
        return []
    ds = digests(t, ids)
    out: list[dict[str, Any]] = []
    for sid in ids:
        p = t.catalog.presets[sid]
        d = ds.get(sid, "")
        checks = [("vram_mb", "awake", p.vram_mb)]
        if p.can_sleep:
            state = "unloaded" if p.sleep_mode is SleepMode.ROUTER else f"sleep_l{p.sleep_mode.level}"
            checks.append(("sleep_vram_mb", state, p.residual_mb))
        for key, state, declared in checks:
            f = fp.figure(sid, state, d)
            if f is None or off_by(declared, f.mb) <= OFF_LIMIT:
                continue
            line = _key_line(t, p.file, key) or _key_line(t, p.file, "vram_mb")
            out.append({"preset": sid, "file": p.file, "line": line, "key": key, "state": state, "declared": declared,
                        "measured": f.mb, "runs": f.samples, "declared_in_file": key == "vram_mb" or p.sleep_vram_mb is not None})
    return out


def _key_line(t: Target, rel: str, key: str) -> int:
    from pathlib import Path

    from .yamlfile import position, read_yaml

    doc = read_yaml(Path(t.catalog.root) / rel, rel, [])
    if not isinstance(doc, dict) or key not in doc:
        return 0
    return position(doc, key, at_key=True)[0]


def write_figures(t: Target, findings: list[dict[str, Any]]) -> list[str]:
    """Write each finding's measured figure into its preset file; returns ``file:line: key: old
    -> new`` lines. The round-trip loader finds each key's value; only that value's text changes
    (a key the preset lacks is added after ``vram_mb``), so comments, order and layout stay as
    they were. A file this cannot edit exactly is re-dumped by the round-trip dumper instead."""
    from pathlib import Path

    done: list[str] = []
    by_file: dict[str, list[dict[str, Any]]] = {}
    for f in findings:
        by_file.setdefault(f["file"], []).append(f)
    for rel, items in by_file.items():
        path = Path(t.catalog.root) / rel
        text = path.read_text()
        want = {f["key"]: f["measured"] for f in items}
        new = _set_values(text, want)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(new)
        tmp.replace(path)
        done += [f"{rel}:{f['line']}: {f['key']}: {f['declared']} -> {f['measured']}" for f in items]
    return done


def _set_values(text: str, want: dict[str, int]) -> str:
    """``text`` (a preset's YAML) with each top-level ``key: value`` of ``want`` set."""
    import io

    from ruamel.yaml import YAML

    from .yamlfile import position

    y = YAML(typ="rt")
    lines = text.splitlines(keepends=True)
    for key, value in want.items():
        doc = y.load("".join(lines))
        if key in doc:
            line, col = position(doc, key)
            row = lines[line - 1]
            end = col - 1
            while end < len(row) and not row[end].isspace():
                end += 1
            lines[line - 1] = row[: col - 1] + str(value) + row[end:]
        else:
            anchor = position(doc, "vram_mb", at_key=True)[0] if "vram_mb" in doc else len(lines)
            lines.insert(anchor, f"{key}: {value}\n")
    out = "".join(lines)
    check = YAML(typ="rt").load(out)
    if all(check.get(k) == v for k, v in want.items()) and [k for k in check if k not in want] == [
            k for k in y.load(text) if k not in want]:
        return out
    doc = y.load(text)  # not a plain scalar where expected: let the round-trip dumper write it
    for key, value in want.items():
        if key in doc:
            doc[key] = value
        else:
            doc.insert(list(doc).index("vram_mb") + 1 if "vram_mb" in doc else len(doc), key, value)
    buf = io.StringIO()
    y.dump(doc, buf)
    return buf.getvalue()


def check_footprints(t: Target, write: bool = False) -> CheckResult:
    """Presets whose declared VRAM is more than 10 % off what the service was measured holding."""
    found = footprint_findings(t)
    if not found:
        return CheckResult("footprints", True, f"footprints OK: every declared figure within {OFF_LIMIT:.0%} of the measured one "
                           "(or nothing measured yet with the current presets)")
    lines = [f"{f['file']}:{f['line']}: {f['preset']} {f['key']} "
             f"{'declares' if f['declared_in_file'] else 'defaults to'} {f['declared']} MB, measured {f['measured']} MB "
             f"({f['state']}, max of {f['runs']} run{'s' if f['runs'] != 1 else ''}): write {f['key']}: {f['measured']}"
             for f in found]
    if write:
        written = write_figures(t, found)
        return CheckResult("footprints", True, "footprints FIXED: " + "; ".join(written))
    return CheckResult("footprints", False, "footprints PROBLEM: " + "; ".join(lines), "inv doctor.footprints --write")
