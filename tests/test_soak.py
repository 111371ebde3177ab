"""scripts/soak.py, run very briefly: the chaos run of the router daemon ends by itself, cleans up
after itself, exits 0, and its summary adds up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_a_brief_soak_passes_and_accounts_for_every_request(tmp_path: Path) -> None:
    for pkg in ("uvicorn", "starlette", "httptools"):  # aiohttp, its client, is a test dependency
        pytest.importorskip(pkg, reason=f"the router daemon's packages are missing ({pkg})")
    out = tmp_path / "soak.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUMOD_")}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "soak.py"), "--seconds", "5", "--clients", "2",
                        "--json", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads(out.read_text())
    # every request counted exactly once
    assert s["sent"] > 10
    assert s["sent"] == s["answered_200"] + sum(s["answered_error"].values()) + sum(s["ours"].values()) + s["lost"]
    assert s["lost"] == 0 and s["wrong"] == [] and s["ok"] is True
    assert sum(s["by_kind"].values()) == s["sent"]
    # the chaos happened: a daemon kill with adoption, service kills, forced switches, malformed requests
    assert s["daemon_kills"] == 1 and len(s["adoption"]) == 1 and s["adoption_failed"] == [] and len(s["rss"]) == 2
    assert s["service_kills"]
    assert s["by_kind"].get("switch", 0) >= 1
    assert len([k for k in s["by_kind"] if k.startswith("malformed ")]) == 9  # each kind at least once
    assert s["ours"]["cut by us"] >= 1 or any(k.startswith("cut ") and s["by_kind"][k] for k in s["by_kind"])
    assert s["ledger"]["samples"] > 10 and s["ledger"]["violations"] == [] and s["ledger"]["max_used_mb"] > 0
    assert s["converged"] is True and any("second switch" in n and "changed steps: none" in n for n in s["convergence"])
    assert all(d["start_kb"] and d["end_kb"] for d in s["rss"])
    # the printed summary has the same figures
    text = r.stdout
    assert f"sent {s['sent']}: answered 200 {s['answered_200']}" in text and "lost 0" in text
    assert "invariants held" in text and "convergence: yes" in text and "result: ok" in text
    # it cleaned up: its directory is gone and none of its processes is left
    work = s["workdir"]
    assert work and not Path(work).exists()
    left = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and work in (d / "cmdline").read_bytes().decode(errors="replace"):
                left.append(d.name)
        except OSError:
            pass
    assert not left
