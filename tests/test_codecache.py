"""dataclasses' generated methods from the compile cache are the same functions as compiled fresh,
the cache file is read only when it is the user's own, and a CLI run fills it."""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpumod_tasks import codecache

REPO = Path(__file__).resolve().parent.parent

CLASSES = '''
from dataclasses import dataclass, field
from typing import Any

@dataclass(frozen=True)
class Frozen:
    name: str
    port: int = 8000
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

@dataclass(order=True)
class Plain:
    a: int
    b: list[int] = field(default_factory=list)
    hidden: str = field(default="x", repr=False)

@dataclass(frozen=True, slots=True)
class Slotted:
    x: float
    y: float = 0.5
'''


def build(cache: codecache.CodeCache | None, monkeypatch: pytest.MonkeyPatch) -> dict[str, type]:
    with monkeypatch.context() as m:
        if cache is not None:
            m.setattr(dataclasses, "exec", cache.exec, raising=False)
        ns: dict[str, object] = {"__name__": "cc_probe"}
        exec(compile(CLASSES, "<classes>", "exec", dont_inherit=True), ns)
    return {k: v for k, v in ns.items() if isinstance(v, type) and k in ("Frozen", "Plain", "Slotted")}


def behaviour(cls: dict[str, type]) -> list[object]:
    F, P, S = cls["Frozen"], cls["Plain"], cls["Slotted"]
    f1, f2 = F("a", extra={"k": 1}), F("a", extra={"k": 2})
    out: list[object] = [repr(f1), f1 == f2, hash(f1) == hash(f2), repr(P(1)), P(1) < P(2), P(1, [2]) == P(1, [2]),
                         repr(S(1.0)), S(1.0) == S(1.0, 0.5)]
    for c in (F, P, S):
        out.append(str(inspect.signature(c)))
        out.append({k: str(v) for k, v in c.__init__.__annotations__.items()})
    try:
        f1.port = 1  # type: ignore[misc]
    except dataclasses.FrozenInstanceError as exc:
        out.append(type(exc).__name__)
    return out


def test_cached_methods_behave_as_freshly_compiled_ones(tmp_path, monkeypatch):
    path = tmp_path / codecache.FILE_NAME
    fresh = behaviour(build(None, monkeypatch))
    first = codecache.CodeCache(path)
    assert first.code == {} and behaviour(build(first, monkeypatch)) == fresh
    assert first.compiled >= 9, "each class's methods went through the cache"
    first.flush()
    assert path.stat().st_mode & 0o777 == 0o600
    second = codecache.CodeCache(path)
    assert len(second.code) == len(first.code)
    assert behaviour(build(second, monkeypatch)) == fresh
    assert second.compiled == 0, "every method's code came from the file"


def test_a_file_not_the_users_own_or_not_readable_as_code_is_ignored(tmp_path, monkeypatch):
    path = tmp_path / codecache.FILE_NAME
    c = codecache.CodeCache(path)
    build(c, monkeypatch)
    c.flush()
    assert codecache.CodeCache(path).code
    path.chmod(0o666)  # anyone could have put code in it
    assert codecache.CodeCache(path).code == {}
    path.chmod(0o600)
    path.write_bytes(b"\x00garbage")
    assert codecache.CodeCache(path).code == {}
    path.write_bytes(__import__("marshal").dumps({"def f(): pass": 42, 3: "x"}))
    assert codecache.CodeCache(path).code == {}


def test_a_cli_run_fills_the_cache_and_the_next_compiles_nothing(tmp_path):
    # (atexit runs last-registered first: the count is printed before the cache's own flush)
    env = {**os.environ, "PYTHONPATH": str(REPO), "GPUMOD_STATE_DIR": str(tmp_path)}
    probe = ("import sys, atexit\nfrom gpumod_tasks import codecache, program\n"
             "c = codecache.install()\natexit.register(lambda: print('COMPILED', c.compiled, file=sys.stderr))\n"
             "sys.argv = ['inv', 'mode.list']\nprogram.main()\n")
    runs = [subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0 and "totals:" in r.stdout, r.stderr
    path = tmp_path / "cache" / codecache.FILE_NAME
    assert path.exists()
    counts = [int(r.stderr.split("COMPILED")[-1].split()[0]) for r in runs]
    assert counts[0] > 0 and counts[1] == 0, counts
