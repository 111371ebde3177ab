"""doctor.venv: does a service's own virtualenv satisfy its preset's ``compat:`` constraints?

One command on the box asks the venv's python for the installed versions (importlib.metadata,
standard library only); the comparison with the constraints (PEP 440, ``packaging``) is pure."""

from __future__ import annotations

import json

from .check import CheckResult
from .target import Target

QUERY = ("import json, sys\nfrom importlib import metadata\nout = {}\nfor n in sys.argv[1:]:\n"
         "    try:\n        out[n] = metadata.version(n)\n    except metadata.PackageNotFoundError:\n        out[n] = None\n"
         "print(json.dumps(out))")


def compare(constraints: dict[str, str], installed: dict[str, str | None]) -> list[str]:
    """Pure: one line per package that misses its constraint."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    bad = []
    for name, spec in constraints.items():
        have = installed.get(name)
        if have is None:
            bad.append(f"{name}: required {spec}, not installed")
            continue
        try:
            ok = Version(have) in SpecifierSet(spec, prereleases=True)
        except InvalidSpecifier:
            bad.append(f"{name}: constraint {spec!r} is not a valid version specifier")
            continue
        except InvalidVersion:
            bad.append(f"{name}: required {spec}, installed version {have!r} is not PEP 440")
            continue
        if not ok:
            bad.append(f"{name}: required {spec}, installed {have}")
    return bad


def check_venv(t: Target, service_id: str) -> CheckResult:
    p = t.catalog.preset(service_id)
    name = f"venv {service_id}"
    constraints = dict(p.compat)
    venv = p.unit_vars.get("venv")
    if not constraints:
        return CheckResult(name, True, f"{name} OK: {p.file} has no compat: constraints")
    if not venv:
        return CheckResult(name, False, f"{name} PROBLEM: {p.file} has compat: constraints but no unit_vars.venv",
                           f"add unit_vars.venv to {p.file}")
    python = f"{venv}/bin/python"
    r = t.host.run([python, "-c", QUERY, *constraints], ok=(0, 1, 2, 126, 127))
    if r.exit_code != 0:
        return CheckResult(name, False, f"{name} PROBLEM: {python} does not run (exit {r.exit_code}: {r.stderr.strip()[:200]})",
                           f"create the venv: python3 -m venv {venv} && {venv}/bin/pip install " +
                           " ".join(f"'{k}{v}'" for k, v in constraints.items()))
    bad = compare(constraints, json.loads(r.stdout))
    if bad:
        return CheckResult(name, False, f"{name} PROBLEM: " + "; ".join(bad),
                           f"{venv}/bin/pip install " + " ".join(f"'{k}{v}'" for k, v in constraints.items()))
    return CheckResult(name, True, f"{name} OK: " + ", ".join(f"{k}{v}" for k, v in constraints.items()) + " satisfied")
