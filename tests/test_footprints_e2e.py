"""Measured footprints for real: stand-ins that hold more or less than their presets declare, and
gpumod finding out (the simulated host, a private systemd, and over SSH)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def switch(h, name, *extra):
    code, out, err = h.inv("mode.switch", "--json", "--name", name, *extra)
    return code, (json.loads(out) if out.strip().startswith("{") else None), err


def store(state: Path) -> dict:
    return json.loads((state / "footprints.json").read_text())


def ledger_mb(state: Path, pid_filter=None) -> dict:
    """What the simulated GPU's ledger charged, per service name."""
    led = json.loads((state / "sim" / "gpu0.json").read_text())
    return led


def emb_lies(h, factor: float = 1.3, extra: str = "") -> None:
    text = (h.root / "presets" / "embedding" / "emb.yaml").read_text()
    h.write_preset("embedding", "emb", text + f"sim:\n  hold_factor: {factor}\n{extra}")


def test_stand_in_holding_30_percent_more_is_measured_after_one_switch(sim_host):
    h = sim_host
    emb_lies(h)
    code, rep, err = switch(h, "rag")
    assert code == 0, err
    fp = store(h.state)["services"]
    got = fp["emb"]["figures"]["awake"][-1]["gpu_mb"]["0"]
    assert abs(got - 3250) <= 3250 * 0.05  # what the ledger charged: 2500 x 1.3
    code, out, err = h.inv("status", "--json")
    d = json.loads(out)
    f = {s["id"]: s for s in d["footprints"]}
    assert f["emb"]["vram_mb"] == got and f["emb"]["vram_source"] == "measured" and f["emb"]["declared_vram_mb"] == 2500
    assert f["doc"]["vram_source"] == "measured" and f["doc"]["vram_mb"] == 5000
    code, out, err = h.inv("status")
    assert f"{got} measured" in out and "5000 measured" in out and "3000 declared" in out  # asr never ran
