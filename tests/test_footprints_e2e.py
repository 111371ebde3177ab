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


def charged_mb(state: Path, pid: int) -> int:
    """What the simulated GPU's ledger charges the process ``pid`` now."""
    led = json.loads((state / "sim" / "gpu0.json").read_text())
    return sum(a["mb"] for a in led["allocs"] if a["pid"] == pid and a.get("release_at") is None)


def status_json(h) -> dict:
    code, out, err = h.inv("status", "--json")
    assert code == 0, err
    return json.loads(out)


def figures(h) -> dict:
    return {s["id"]: s for s in status_json(h)["footprints"]}


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
    pid = {s["id"]: s["pid"] for s in status_json(h)["services"]}["emb"]
    charged = charged_mb(h.state, pid)
    assert charged == 3250 and abs(got - charged) <= charged * 0.05  # what the ledger charged: 2500 x 1.3
    code, out, err = h.inv("status", "--json")
    d = json.loads(out)
    f = {s["id"]: s for s in d["footprints"]}
    assert f["emb"]["vram_mb"] == got and f["emb"]["vram_source"] == "measured" and f["emb"]["declared_vram_mb"] == 2500
    assert f["doc"]["vram_source"] == "measured" and f["doc"]["vram_mb"] == 5000
    code, out, err = h.inv("status")
    assert f"{got} measured" in out and "5000 measured" in out and "3000 declared" in out  # asr never ran
    # mode.simulate plans with it too, says so, and gives the expected switch time from here
    code, out, err = h.inv("mode.simulate", "--name", "rag", "--json")
    d = json.loads(out)
    assert code == 0 and d["total_mb"] == got + 5000
    assert {f["id"]: f["vram_source"] for f in d["figures"]} == {"emb": "measured", "doc": "measured"}
    assert d["expected_s"] is not None and d["expected_steps"] == 0  # already in rag
    code, out, err = h.inv("mode.simulate", "--name", "rag")
    assert f"Fits: {got + 5000} / 24564 MB" in out and f"emb {got} MB measured (declared 2500)" in out
    assert "expected switch time from now (rag): 0.0 s" in out
    code, out, err = h.inv("mode.simulate", "--name", "chat")
    assert "expected switch time from now (rag):" in out and "(0 steps)" not in out
    code, out, err = h.inv("mode.list", "--json")
    rows = {m["id"]: m for m in json.loads(out)}
    assert rows["rag"]["total_vram_mb"] == got + 5000 and rows["rag"]["declared_total_vram_mb"] == 7500
    assert rows["rag"]["measured"] == ["emb", "doc"]


def test_a_mode_that_fits_on_declared_figures_but_not_measured_ones_is_refused(sim_host):
    h = sim_host
    h.write_preset("chat", "fat", f"id: fat\nname: fat\ndriver: vllm\nport: {h.ports['asr']}\nvram_mb: 12000\n"
                                  "startup_timeout: 20\nsupports_sleep: true\nsleep_mode: l1\nsim:\n  hold_factor: 1.3\n")
    h.write_mode("solo", ["fat"])
    h.write_mode("both", ["fat", "big"])
    code, out, err = h.inv("mode.simulate", "--name", "both")
    assert code == 0 and "Fits: 21000 / 24564 MB" in out  # on the declared figures it fits
    assert switch(h, "solo")[0] == 0
    before = status_json(h)
    code, rep, err = switch(h, "both")
    assert code == 1 and rep is not None and not rep["ok"]
    assert "15600 MB + 9000 MB" not in rep["error"]  # (the arithmetic is one total)
    assert "mode both does not fit: 24600 MB" in rep["error"] and "nothing was changed" in rep["error"]
    assert "awake fat: 15600 MB" in rep["details"]
    assert "  fat: 15600 MB measured awake (declared 12000 MB)" in rep["details"]
    after = status_json(h)
    assert [(s["id"], s["state"], s["pid"]) for s in after["services"]] == [(s["id"], s["state"], s["pid"]) for s in before["services"]]
    assert after["mode"] == "solo"
    code, out, err = h.inv("mode.simulate", "--name", "both")
    assert code == 1 and "Does not fit: 24600 / 24564 MB" in out and "fat 15600 MB measured (declared 12000)" in out


def test_doctor_flags_the_preset_at_its_line_and_write_fixes_it(sim_host):
    h = sim_host
    path = h.root / "presets" / "embedding" / "emb.yaml"
    lines = path.read_text().splitlines()
    lines.insert(0, "# the embedding model (keep this comment)")
    lines = [ln + "  # what it takes" if ln.startswith("vram_mb:") else ln for ln in lines]
    path.write_text("\n".join(lines) + "\nsim:\n  hold_factor: 1.3\n")
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.startswith("vram_mb:"))
    code, out, err = h.inv("doctor.footprints")
    assert code == 0, out + err  # nothing measured yet
    assert switch(h, "rag")[0] == 0
    code, out, err = h.inv("doctor.footprints", "--json")
    d = json.loads(out)
    assert code == 1 and not d["ok"]
    detail = d["checks"][0]["detail"]
    assert f"presets/embedding/emb.yaml:{line}: emb vram_mb declares 2500 MB, measured 3250 MB" in detail
    assert "write vram_mb: 3250" in detail and "doc" not in detail  # doc holds what it declares
    assert d["checks"][0]["fix"] == "inv doctor.footprints --write"
    original = path.read_text()
    code, out, err = h.inv("doctor.footprints", "--write")
    assert code == 0 and f"presets/embedding/emb.yaml:{line}: vram_mb: 2500 -> 3250" in out
    text = path.read_text()
    assert text == original.replace("vram_mb: 2500  # what it takes", "vram_mb: 3250  # what it takes")  # nothing else moved
    assert text.startswith("# the embedding model (keep this comment)\n")
    assert "vram_mb: 3250  # what it takes\n" in text
    assert [ln.split(":")[0] for ln in text.splitlines()] == [ln.split(":")[0] for ln in lines] + ["sim", "  hold_factor"]
    code, out, err = h.inv("doctor.footprints")
    assert code == 0, out


def test_sleep_residuals_are_learned_per_level_and_counted(sim_host):
    h = sim_host
    text = (h.root / "presets" / "embedding" / "doc.yaml").read_text()
    # (within the release wait's 256 MB tolerance of the declared 512 MB, so the first sleep passes)
    h.write_preset("embedding", "doc", text + "sim:\n  sleep_l1_mb: 700\n  sleep_l2_mb: 300\n")
    assert switch(h, "rag")[0] == 0
    code, rep, err = switch(h, "code")
    assert code == 0, (rep["error"], rep["steps"])  # doc sleeps at L1
    f = figures(h)["doc"]
    assert f["sleep_source"] == "measured" and f["sleep_vram_mb"] == 700 and f["declared_sleep_vram_mb"] == 512
    assert f["measured_sleep_mb"] == {"l1": 700}
    assert status_json(h)["gpu"]["used_mb"] == 2500 + 6000 + 700
    assert h.inv("service.wake", "doc")[0] == 0
    code, out, err = h.inv("service.sleep", "doc", "--level", "2")
    assert code == 0, out + err
    f = figures(h)["doc"]
    assert f["measured_sleep_mb"] == {"l1": 700, "l2": 300}
    assert f["sleep_vram_mb"] == 300  # asleep at L2 now: that level's residual is counted
    code, out, err = h.inv("mode.switch", "--name", "code", "--dry-run", "--json")
    assert json.loads(out)["projected_mb"] == 2500 + 6000 + 300
    fp = store(h.state)["services"]["doc"]
    assert set(fp["durations"]) >= {"start", "sleep_l1", "wake_l1", "sleep_l2"}
    code, out, err = h.inv("service.show", "doc")
    assert "sleep_l1" in out and "700" in out and "sleep_l2" in out and "300" in out


def test_a_preset_edit_invalidates_its_figures(sim_host):
    h = sim_host
    emb_lies(h)
    assert switch(h, "rag")[0] == 0
    assert figures(h)["emb"]["vram_source"] == "measured"
    text = (h.root / "presets" / "embedding" / "emb.yaml").read_text()
    h.write_preset("embedding", "emb", text.replace("startup_timeout: 20", "startup_timeout: 25"))
    f = figures(h)
    assert f["emb"]["vram_source"] == "declared" and f["emb"]["vram_mb"] == 2500
    assert f["doc"]["vram_source"] == "measured"  # the others keep theirs
    code, out, err = h.inv("service.show", "emb", "--json")
    rows = json.loads(out)["footprint"]["rows"]
    awake = [r for r in rows if r["state"] == "awake"]
    assert awake == [{"state": "awake", "gpu": 0, "declared_mb": 2500, "measured_mb": None, "samples": 0,
                      "stale_samples": 1, "at": None}]


@pytest.mark.systemd
def test_measured_under_systemd_units(systemd_box):
    box = systemd_box
    emb_lies(box.sim)
    code, out, err = box.inv("mode.switch", "--name", "rag", "--json")
    assert code == 0, err
    code, out, err = box.inv("status", "--json")
    d = json.loads(out)
    f = {s["id"]: s for s in d["footprints"]}
    pid = {s["id"]: s["pid"] for s in d["services"]}["emb"]
    charged = charged_mb(box.state, pid)
    assert charged == 3250 and f["emb"]["vram_source"] == "measured" and abs(f["emb"]["vram_mb"] - charged) <= charged * 0.05
    assert (box.state / "footprints.json").exists()  # on the target, next to its mode record
    code, out, err = box.inv("doctor.footprints")
    assert code == 1 and "emb vram_mb declares 2500 MB, measured 3250 MB" in out


@pytest.mark.systemd
def test_measured_over_ssh(ssh_lab, tmp_path):
    lab = ssh_lab
    emb_lies(lab.sim)
    code, out, err = lab.inv("-H", "box1", "mode.switch", "--name", "rag", "--json")
    assert code == 0, err
    code, out, err = lab.inv("-H", "box1", "mode.switch", "--name", "code", "--json")
    assert code == 0, err
    code, out, err = lab.inv("-H", "box1", "status", "--json")
    d = json.loads(out)
    f = {s["id"]: s for s in d["footprints"]}
    pid = {s["id"]: s["pid"] for s in d["services"]}["emb"]
    charged = charged_mb(tmp_path / "box1-state", pid)
    assert charged == 3250 and f["emb"]["vram_source"] == "measured" and abs(f["emb"]["vram_mb"] - charged) <= charged * 0.05
    assert f["doc"]["sleep_source"] == "measured" and f["doc"]["measured_sleep_mb"] == {"l1": 512}
    assert f["router"]["vram_source"] == "measured" and f["router"]["learned_s"]["router_load"] > 0
    code, out, err = lab.inv("-H", "box1", "mode.simulate", "--name", "rag")
    assert code == 0 and "emb 3250 MB measured (declared 2500)" in out and "expected switch time from now (code):" in out
    code, out, err = lab.inv("-H", "box1", "service.show", "emb", "--json")
    rows = json.loads(out)["footprint"]["rows"]
    assert {(r["state"], r["gpu"], r["declared_mb"], r["measured_mb"]) for r in rows} >= {("awake", 0, 2500, 3250)}


def test_model_info_shows_the_learned_figure_next_to_its_estimate(sim_host, tmp_path):
    from test_modelinfo_config import QWEN25_05B

    h = sim_host
    d = tmp_path / "qwen"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(QWEN25_05B))
    text = (h.root / "presets" / "embedding" / "emb.yaml").read_text()
    h.write_preset("embedding", "emb", text + f"model_path: {d}\ncontext_size: 8192\nsim:\n  hold_factor: 1.3\n")
    code, out, err = h.inv("model.info", str(d), "--json")
    assert code == 0 and json.loads(out)["learned"] == [], err  # nothing measured yet
    assert switch(h, "rag")[0] == 0
    code, out, err = h.inv("model.info", str(d), "--json")
    d_json = json.loads(out)
    assert d_json["learned"] == [{"service": "emb", "measured_mb": 3250, "gpu_mb": {"0": 3250}, "runs": 1, "declared_mb": 2500,
                                  "context_size": 8192}]
    code, out, err = h.inv("model.info", str(d))
    assert "measured        3250 MB held by emb (max of 1 run; preset declares 2500 MB) at its 8192 tokens: estimate" in out


def test_the_daemon_picks_the_mode_quicker_by_learned_durations(sim_host, daemon_factory):
    from conftest import free_ports

    h = sim_host
    px, pw, pc = free_ports(3)
    base = "driver: vllm\nvram_mb: 1000\nstartup_timeout: 20\n"
    h.write_preset("chat", "x", f"id: x\nname: x\nport: {px}\n{base}supports_sleep: true\nsleep_mode: l1\n")
    # w wakes slowly here (2.5 s; the default guess for an L1 wake is 2 s), c starts fast (0.2 s; the guess: 45 s)
    h.write_preset("chat", "w", f"id: w\nname: w\nport: {pw}\n{base}supports_sleep: true\nsleep_mode: l1\nsim:\n  wake_l1_s: 2.5\n")
    h.write_preset("chat", "c", f"id: c\nname: c\nport: {pc}\n{base}supports_sleep: false\nsleep_mode: none\n")
    h.write_mode("a", ["x", "w"])
    h.write_mode("b", ["x", "c"])
    h.write_mode("z", ["emb"])
    for m in ("a", "b", "a", "z"):  # w started, slept, woken; c started and stopped; x asleep at the end
        code, rep, err = switch(h, m)
        assert code == 0, err
    learned = store(h.state)["services"]
    assert learned["w"]["durations"]["wake_l1"][-1]["s"] >= 2.5 and learned["c"]["durations"]["start"][-1]["s"] < 2.0
    d = daemon_factory()
    r = d.post("/switch", {"model_id": "x"})
    assert r.status_code == 200 and r.json()["mode"] == "b", r.text  # starting c is quicker here than waking w
    assert switch(h, "z")[0] == 0
    (h.state / "footprints.json").unlink()  # nothing learned: the engines' defaults decide
    r = d.post("/switch", {"model_id": "x"})
    assert r.status_code == 200 and r.json()["mode"] == "a", r.text


def test_published_residuals_on_a_simulated_host_are_learned_even_from_a_failed_run(sim_host):
    h = sim_host
    inv = h.root / "inventory" / "hosts.yaml"
    inv.write_text(inv.read_text().replace("release_lag_s: 0.25}", "release_lag_s: 0.25, published: 1}")
                   .replace("release_timeout_s: 10", "release_timeout_s: 2"))
    assert switch(h, "rag")[0] == 0
    # doc declares no sleep_vram_mb, so vLLM's default 512 MB applies; a sleeping vLLM really keeps
    # ~774 MiB (the published figure), more than the release wait's 256 MB tolerance allows
    code, out, err = h.inv("service.sleep", "doc")
    assert code == 1 and "GPU still uses 3274 MB > expected 3012 MB + 256 MB" in err
    f = figures(h)["doc"]
    assert f["measured_sleep_mb"] == {"l1": 774} and f["sleep_vram_mb"] == 774 and f["declared_sleep_vram_mb"] == 512
    assert h.inv("service.wake", "doc")[0] == 0
    code, out, err = h.inv("service.sleep", "doc")
    assert code == 0, out + err  # the release wait now expects what doc really keeps
    code, out, err = h.inv("doctor.footprints")
    assert code == 1 and "doc sleep_vram_mb defaults to 512 MB, measured 774 MB (sleep_l1, max of " in out
    assert "write sleep_vram_mb: 774" in out
    assert h.inv("doctor.footprints", "--write")[0] == 0
    text = (h.root / "presets" / "embedding" / "doc.yaml").read_text()
    assert "vram_mb: 5000\nsleep_vram_mb: 774\n" in text
