"""A warm switch over real SSH costs at most 10 round trips either way (the release wait is one
command polling on the box, however long the release takes), and still waits for the release."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.systemd


def test_a_warm_switch_over_ssh_takes_at_most_ten_round_trips(ssh_lab):
    lab = ssh_lab
    code, out, err = lab.inv("-H", "box1", "host.bootstrap")
    assert code == 0, err + out
    for mode in ("code", "rag"):  # both modes' services exist from now on (asleep or awake)
        assert lab.inv("-H", "box1", "mode.switch", "--name", mode)[0] == 0
    for mode in ("code", "rag"):
        code, out, err = lab.inv("-H", "box1", "mode.switch", "--name", mode, "--json")
        assert code == 0, err
        rep = json.loads(out)
        assert rep["round_trips"] <= 10, (mode, rep["round_trips"])
        waits = [s for s in rep["steps"] if s["kind"] == "wait-release"]
        assert waits, rep["steps"]
        # the box-side loop reported the figures it polled; the lag (0.25 s) was waited out
        assert all("MB used after" in w["detail"] and " polls" in w["detail"] for w in waits), waits
        assert any(w["seconds"] >= 0.2 for w in waits), waits
