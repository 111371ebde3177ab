"""Host protections, as idempotent operations: the kernel memory reserve (sysctl.d drop-in) and OOM
protection for the units that keep the box reachable (systemd drop-ins).

The work is done by the standalone scripts under ``scripts/`` (plain sh, usable without gpumod);
a task copies the script to the box's state dir and runs it there, so the same code serves both,
locally and over SSH.  Each script prints ``changed PATH`` / ``ok PATH`` lines; an operation
reports what changed.  A host's ``root_prefix`` installs under another root (tests, images): then
nothing live is touched (no ``sysctl --system``, no daemon-reload).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import GpumodError
from .target import Target

SOURCE_TREE = Path(__file__).resolve().parent.parent
SYSCTL_SCRIPT = "scripts/install-gpumod-sysctl.sh"
OOM_SCRIPT = "scripts/oom-protection/install.sh"
SYSCTL_FILE = "etc/sysctl.d/90-gpumod.conf"
OOM_DROPIN = "90-gpumod-oom.conf"


@dataclass
class OpResult:
    name: str
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def did_change(self) -> bool:
        return bool(self.changed)


def parse_script_output(name: str, text: str) -> OpResult:
    """Pure: the scripts' line protocol -> OpResult."""
    r = OpResult(name)
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        if word == "changed":
            r.changed.append(rest)
        elif word == "ok":
            r.unchanged.append(rest)
        elif word in ("applied", "note"):
            r.notes.append(f"{word} {rest}")
    return r


def _run_script(t: Target, rel: str, installed_as: str, args: list[str]) -> OpResult:
    # the scripts ship with gpumod's source tree (not with a catalog in $GPUMOD_HOME)
    src = SOURCE_TREE / rel
    if not src.is_file():
        raise GpumodError(f"{rel} is missing from the gpumod source tree at {SOURCE_TREE}")
    remote = f"{t.state_dir}/bin/{installed_as}"
    sudo = t.root_prefix == "/" and not t.host.is_root
    t.host.write_file(remote, src.read_text(), mode=0o755, sudo=sudo)
    root = [] if t.root_prefix == "/" else ["--root", t.root_prefix]
    r = t.host.run(["sh", remote, *root, *args], sudo=sudo, ok=(0, 1, 2), what=rel)
    if r.exit_code != 0:
        raise GpumodError(f"[{t.spec.name}] {rel} failed (exit {r.exit_code}): {(r.stderr or r.stdout).strip()}")
    return parse_script_output(rel, r.stdout)


def install_sysctl(t: Target) -> OpResult:
    return _run_script(t, SYSCTL_SCRIPT, "gpumod-sysctl.sh", ["--kbytes", str(t.spec.min_free_kbytes)])


def install_oom_protection(t: Target) -> OpResult:
    return _run_script(t, OOM_SCRIPT, "gpumod-oom-protection.sh", ["--memory-min", t.spec.oom_memory_min, "--oom-score", str(t.spec.oom_score_adj),
                                       *t.spec.oom_protect])


def rooted(t: Target, rel: str) -> str:
    return f"{t.root_prefix.rstrip('/')}/{rel}"


def parse_sysctl_dropin(text: str, key: str = "vm.min_free_kbytes") -> int | None:
    """Pure: the value of ``key`` in a sysctl.d file (the last assignment wins, as for sysctl), or None."""
    value = parse_dropin(text).get(key, "")
    return int(value) if value.isdigit() else None


def oom_dropin_path(t: Target, unit: str) -> str:
    unit = unit if unit.endswith(".service") else f"{unit}.service"
    return rooted(t, f"etc/systemd/system/{unit}.d/{OOM_DROPIN}")


def parse_dropin(text: str) -> dict[str, str]:
    """Pure: ``Key=Value`` lines of a unit drop-in (comments and sections skipped)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out
