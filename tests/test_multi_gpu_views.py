"""Every view shows every GPU: `status` (bars, each service's GPUs, --json), `status --watch`,
`mode.simulate`'s per-GPU bars from a plan's placement, the router daemon's /models, /metrics
and /ui.

The view functions are fed facts built here (two GPUs); the real ones run on the simulated host
with a second GPU: a second ledger file beside the first in its sim dir, charged by a service's
own process (as a tensor-parallel worker or a split llama.cpp model is) and by a foreign one."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_web_ui import artifacts, browser  # noqa: F401 - the browser tests' fixtures

from gpumod_tasks.catalog.model import Catalog, Driver, Preset
from gpumod_tasks.facts.gpu import Gpu, GpuFacts
from gpumod_tasks.facts.units import UnitState
from gpumod_tasks.gpu_use import fit_per_gpu, gpu_uses, gpus_label, planned_uses, service_gpu_mb, service_gpus
from gpumod_tasks.observed import Observed, Releasing, ServiceObs, SvcState
from gpumod_tasks.plan.result import GpuPlan, Plan
from gpumod_tasks.state import ModeRecord

NAME = "NVIDIA GeForce RTX 4090"


def running(sid: str, pid: int, vram: int, gpu_mb: dict[int, int] | None = None) -> ServiceObs:
    return ServiceObs(sid, SvcState.RUNNING, UnitState(f"gpumod-{sid}.service", active="active", sub="running", main_pid=pid),
                      vram_mb=vram, gpu_mb=gpu_mb or {})


def two_gpus(services: dict[str, ServiceObs], per0: dict[int, int | None], per1: dict[int, int | None],
             unmapped: dict[int, int], releasing: tuple[Releasing, ...] = ()) -> Observed:
    used0, used1 = sum(v or 0 for v in per0.values()), sum(v or 0 for v in per1.values())
    gpus = (Gpu(0, "GPU zero", 24000, used0, 24000 - used0, "GPU-u0", per0),
            Gpu(1, "GPU one", 16000, used1, 16000 - used1, "GPU-u1", per1))
    return Observed("h", services, GpuFacts("nvidia-smi", gpus), None, ModeRecord("m"), "systemd", False,
                    unmapped_pids=unmapped, releasing=releasing)


def console() -> tuple[object, io.StringIO]:
    from gpumod_tasks.ui import make_console

    buf = io.StringIO()
    return make_console(buf), buf


# -- the view functions, on facts built here ------------------------------------------------------

def test_per_gpu_figures_from_the_observations_gpu_mb():
    # tp: a tensor-parallel service on both GPUs (its ranks are separate pids); one: on GPU 1 only;
    # pid 99 is nobody's, on GPU 1; pid 77 is on its way out on GPU 0
    services = {"tp": running("tp", 10, 12000, {0: 6000, 1: 6000}), "one": running("one", 20, 3000, {1: 3000}),
                "off": ServiceObs("off", SvcState.STOPPED, UnitState("gpumod-off.service"))}
    seen = two_gpus(services, {10: 6000, 77: 400}, {11: 6000, 20: 3000, 99: 800}, {99: 800},
                    releasing=(Releasing(77, 400, "x"),))
    uses = gpu_uses(seen)
    assert [(u.index, u.uuid, u.total_mb, u.used_mb) for u in uses] == [(0, "GPU-u0", 24000, 6400), (1, "GPU-u1", 16000, 9800)]
    assert [u.services for u in uses] == [{"tp": 6000}, {"tp": 6000, "one": 3000}]
    assert [u.other for u in uses] == [{}, {99: 800}] and [u.releasing_mb for u in uses] == [400, 0]
    assert service_gpus(uses) == {"tp": (0, 1), "one": (1,)}
    assert service_gpu_mb(uses) == {"tp": {0: 6000, 1: 6000}, "one": {1: 3000}}
    assert gpus_label((1, 0)) == "GPU0,1" and gpus_label(()) == "-"
    d = uses[1].as_dict()
    assert d["services"] == {"tp": 6000, "one": 3000} and d["other_processes"] == {"99": 800} and d["free_mb"] == 6200


def test_without_gpu_mb_a_service_counts_on_its_processes_gpus_and_one_gpu_takes_all():
    services = {"a": running("a", 10, 5000), "b": running("b", 20, 1000)}
    # one GPU, no per-GPU figures: every service's MB on GPU 0, foreign processes as they are
    one = Observed("h", services, GpuFacts("nvidia-smi", (Gpu(0, "G", 24000, 6500, 17500, "u", {10: 5000, 20: 1000, 9: 500}),)),
                   None, ModeRecord(None), "systemd", False, unmapped_pids={9: 500})
    (u,) = gpu_uses(one)
    assert u.services == {"a": 5000, "b": 1000} and u.other == {9: 500}
    # two GPUs, no per-GPU figures: a's main process is listed on GPU 1
    uses = gpu_uses(two_gpus(services, {20: 1000}, {10: 5000}, {}))
    assert [x.services for x in uses] == [{"b": 1000}, {"a": 5000}]


def test_status_text_has_a_bar_per_gpu_and_each_services_gpus():
    from gpumod_tasks.ui import gpu_renderables, status_table

    cat = Catalog({s: Preset(s, s, Driver.VLLM, 8000 + i, mb) for i, (s, mb) in enumerate((("tp", 12000), ("one", 3000), ("off", 1)))}, {})
    services = {"tp": running("tp", 10, 12000, {0: 6000, 1: 6000}), "one": running("one", 20, 3000, {1: 3000}),
                "off": ServiceObs("off", SvcState.STOPPED, UnitState("gpumod-off.service"))}
    seen = two_gpus(services, {10: 6000}, {11: 6000, 20: 3000, 99: 800}, {99: 800})
    con, buf = console()
    for r in gpu_renderables(seen):
        con.print(r)
    con.print(status_table(cat, seen))
    out = buf.getvalue()
    lines = out.splitlines()
    assert "2 GPUs  15800 / 40000 MB used, 24200 MB free  (backend: nvidia-smi)" in lines[0]
    g0, g1 = lines.index("GPU0 GPU zero  6000 / 24000 MB used, 18000 MB free"), lines.index("GPU1 GPU one  9800 / 16000 MB used, 6200 MB free")
    bar0, bar1 = lines[g0 + 1], lines[g1 + 1]
    # 60 cells: GPU 0 holds tp's share (15 cells) and is free after; GPU 1 holds tp, one and another process
    assert bar0 == "[" + "█" * 15 + "." * 45 + "]", bar0
    assert bar1 == "[" + "█" * 22 + "█" * 11 + "▒" * 4 + "." * 23 + "]", bar1
    assert "tp 6000 MB" in lines[g0 + 2] and "one" not in lines[g0 + 2]
    assert "tp 6000 MB" in lines[g1 + 2] and "one 3000 MB" in lines[g1 + 2]
    assert "GPU1 other GPU processes: pid 99: 800 MB" in out
    rows = {ln.split("│")[1].strip(): ln for ln in lines if ln.startswith("│")}
    head = next(ln for ln in lines if "service" in ln and "GPUs" in ln)
    assert head.index("GPUs") < head.index("driver")
    assert "GPU0,1" in rows["tp"] and "GPU1" in rows["one"] and "GPU0,1" not in rows["one"] and "GPU" not in rows["off"]


def test_one_gpu_keeps_the_single_bar_and_the_table_without_a_gpus_column():
    from gpumod_tasks.ui import gpu_renderables, status_table

    cat = Catalog({"a": Preset("a", "a", Driver.VLLM, 8000, 5000)}, {})
    seen = Observed("h", {"a": running("a", 10, 5000, {0: 5000})}, GpuFacts("nvidia-smi", (Gpu(0, NAME, 24564, 5000, 19564, "u", {10: 5000}),)),
                    None, ModeRecord(None), "systemd", False)
    con, buf = console()
    for r in gpu_renderables(seen):
        con.print(r)
    con.print(status_table(cat, seen))
    out = buf.getvalue()
    assert out.splitlines()[0] == f"{NAME}  5000 / 24564 MB used, 19564 MB free  (backend: nvidia-smi)"
    assert "GPU0" not in out and "GPUs" not in out


def test_a_plans_placement_gives_a_bar_per_gpu():
    from gpumod_tasks.fit import simulate
    from gpumod_tasks.ui import fit_report

    presets = {"tp": Preset("tp", "tp", Driver.VLLM, 8001, 16000, gpus=2),
               "split": Preset("split", "split", Driver.LLAMACPP, 8002, 8000, gpus=2, tensor_split=(3.0, 1.0)),
               "small": Preset("small", "small", Driver.VLLM, 8003, 2000)}
    cat = Catalog(presets, {})
    plan = Plan("m", (), placement=(("tp", (0, 1)), ("split", (1, 0)), ("small", (1,))),
                gpus=(GpuPlan(0, 24000, 23000, 10000, "GPU-u0", "GPU zero"), GpuPlan(1, 24000, 23000, 16000, "GPU-u1", "GPU one")))
    per = fit_per_gpu(plan, presets)
    # tp splits evenly; split's 3:1 goes in its GPU order (GPU 1 first)
    assert [dict(g.services) for g in per] == [{"tp": 8000, "split": 2000}, {"tp": 8000, "split": 6000, "small": 2000}]
    assert per[1].as_dict()["budget_mb"] == 23000 and per[1].as_dict()["services"]["split"] == 6000
    # asleep after the plan: its residual, split the same way (an unloaded router model: nothing)
    asleep = planned_uses(plan.placement, plan.gpus, presets, {"tp": 1, "split": 0})
    assert [dict(g.services) for g in asleep] == [{"tp": presets["tp"].residual_mb // 2}, {"tp": presets["tp"].residual_mb // 2, "small": 2000}]
    con, buf = console()
    fit_report(con, simulate(cat, list(presets.values()), 48000), "simulate m", per_gpu=per)
    out = buf.getvalue()
    assert "GPU0 GPU zero: 10000/24000 MB (budget 23000 MB)" in out and "GPU1 GPU one: 16000/24000 MB (budget 23000 MB)" in out
    bars = dict(re.findall(r"^(GPU\d) (\[.*\])$", out, re.M))
    # letters follow the services' order on every GPU: A=tp, B=split, C=small
    assert bars["GPU0"] == "[" + "A" * 20 + "B" * 5 + "." * 35 + "]", bars
    assert bars["GPU1"] == "[" + "A" * 20 + "B" * 15 + "C" * 5 + "." * 20 + "]", bars
    assert "A=tp 8000 MB  B=split 2000 MB" in out and "C=small 2000 MB" in out
    assert not re.search(r"^VRAM \[", out, re.M)  # the single bar gives way
    con, buf = console()
    fit_report(con, simulate(cat, list(presets.values()), 48000), "simulate m")
    assert re.search(r"^VRAM \[", buf.getvalue(), re.M)  # no placement: today's single bar


def test_dashboard_bars_split_a_tensor_parallel_services_declared_figure_and_plans_carry_placement():
    from gpumod_tasks.daemon import view

    presets = {"tp": Preset("tp", "tp", Driver.VLLM, 8001, 12000, gpus=2),
               "split": Preset("split", "split", Driver.LLAMACPP, 8002, 4000, gpus=2, tensor_split=(3.0, 1.0), gpu_pin=("1", "0")),
               "one": Preset("one", "one", Driver.VLLM, 8003, 3000)}
    cat = Catalog(presets, {})
    services = {"tp": running("tp", 10, 11800, {0: 5900, 1: 5900}), "split": running("split", 30, 4000, {0: 1000, 1: 3000}),
                "one": running("one", 20, 3000, {1: 3000})}
    seen = two_gpus(services, {10: 5900, 30: 1000}, {11: 5900, 30: 3000, 20: 3000, 99: 800}, {99: 800})
    bars = view.gpu_bars(cat, seen)
    segs = [{s["service"]: (s["measured_mb"], s["declared_mb"]) for s in b["segments"]} for b in bars]
    # tp's 12000 declared MB split evenly; split's 3:1 in its pinned order (GPU 1 first); one on its GPU
    assert segs == [{"tp": (5900, 6000), "split": (1000, 1000)},
                    {"tp": (5900, 6000), "split": (3000, 3000), "one": (3000, 3000)}]
    assert [b["other_mb"] for b in bars] == [0, 800] and bars[1]["uuid"] == "GPU-u1"
    assert view.service_gpu_mb(bars) == {"tp": {"0": 5900, "1": 5900}, "split": {"0": 1000, "1": 3000}, "one": {"1": 3000}}
    plan = Plan("m", (), placement=(("tp", (0, 1)), ("one", (1,))),
                gpus=(GpuPlan(0, 24000, 23000, 6000), GpuPlan(1, 16000, 15000, 9000)))
    d = view.plan_dict(plan, cat)
    assert d["placement"] == {"tp": [0, 1], "one": [1]}
    assert [(g["index"], g["projected_mb"], g["services"]) for g in d["gpus"]] == [(0, 6000, {"tp": 6000}), (1, 9000, {"tp": 6000, "one": 3000})]
    assert view.plan_dict(Plan("m", ()), cat)["gpus"] == []  # one GPU, or a plan without per-GPU figures
    # a mode's fit on the page speaks per GPU
    assert view.fit_why(plan) == "GPU0 6000 MB of 23000 MB, GPU1 9000 MB of 15000 MB"
    assert view.fit_why(Plan("m", (), projected_mb=7500, budget_mb=24000)) == "7500 MB of 24000 MB"


# -- for real: the simulated host with a second GPU ------------------------------------------------

ONE_GPU = f"gpu: {{name: {NAME}, total_mb: 24564}}"


def declare_two_gpus(inventory: Path) -> None:
    """Where the inventory can declare several simulated GPUs, declare two (the set-up then keeps a
    ledger for each); where it cannot, ``add_gpu`` writes the second ledger by hand."""
    from gpumod_tasks.inventory import HOST_SCHEMA

    if "gpus" in HOST_SCHEMA:
        text = inventory.read_text()
        assert ONE_GPU in text
        inventory.write_text(text.replace(ONE_GPU, f"gpus: {{count: 2, name: {NAME}, total_mb: 24564}}"))


def add_gpu(sim_dir: Path) -> Path:
    """The second simulated GPU: its ledger beside the first (the readers list every ledger)."""
    from gpumod_tasks.sim.ledger import Ledger

    path = sim_dir / "gpu1.json"
    assert (sim_dir / "gpu0.json").exists()
    if not path.exists():
        Ledger.create(path, name=NAME, total_mb=24564, index=1, release_lag_s=0.0)
    return path


def uuids(sim_dir: Path) -> list[str]:
    return [json.loads((sim_dir / f"gpu{i}.json").read_text())["uuid"] for i in (0, 1)]


def charge(path: Path, pid: int, mb: int, tag: str) -> None:
    from gpumod_tasks.sim.ledger import Ledger

    Ledger(path).alloc(pid, mb, tag=tag)


@pytest.fixture
def two_gpu_rag(sim_host):
    """rag running (emb, doc on GPU 0); doc's own process also holds 1500 MB on GPU 1 and a process
    gpumod does not run holds 700 MB there."""
    declare_two_gpus(sim_host.root / "inventory" / "hosts.yaml")
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    gpu1 = add_gpu(sim_host.state / "sim")
    code, out, err = sim_host.inv("status", "--json")
    assert code == 0, err
    doc_pid = {s["id"]: s["pid"] for s in json.loads(out)["services"]}["doc"]
    foreign = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        charge(gpu1, doc_pid, 1500, "tp-rank-1")
        charge(gpu1, foreign.pid, 700, "other")
        yield sim_host, doc_pid, foreign.pid
    finally:
        foreign.kill()
        foreign.wait()


def test_status_shows_two_bars_and_json_two_gpus(two_gpu_rag):
    h, doc_pid, foreign = two_gpu_rag
    code, out, err = h.inv("status")
    assert code == 0, err
    lines = out.splitlines()
    assert "2 GPUs  9700 / 49128 MB used, 39428 MB free" in out
    assert f"GPU0 {NAME}  7500 / 24564 MB used, 17064 MB free" in lines
    assert f"GPU1 {NAME}  2200 / 24564 MB used, 22364 MB free" in lines
    bars = [ln for ln in lines if ln.startswith("[") and ln.endswith("]")]
    assert len(bars) == 2 and all(len(b) == 62 for b in bars)
    assert f"GPU1 other GPU processes: pid {foreign}: 700 MB" in out
    rows: dict[str, str] = {}
    for ln in lines:  # the services table (the first one printed; the footprint table follows)
        if ln.startswith("│"):
            rows.setdefault(ln.split("│")[1].strip(), ln)
    assert re.search(r"\b6500\s+│\s+GPU0,1\s+│", rows["doc"]), rows["doc"]
    assert re.search(r"\b2500\s+│\s+GPU0\s+│", rows["emb"]), rows["emb"]

    code, out, err = h.inv("status", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["gpu"]["used_mb"] == 7500  # the first GPU, as with one
    u0, u1 = uuids(h.state / "sim")
    assert [(g["index"], g["uuid"], g["total_mb"], g["used_mb"]) for g in d["gpus"]] == [(0, u0, 24564, 7500), (1, u1, 24564, 2200)]
    assert d["gpus"][0]["services"] == {"emb": 2500, "doc": 5000}
    assert d["gpus"][1]["services"] == {"doc": 1500} and d["gpus"][1]["other_processes"] == {str(foreign): 700}
    svc = {s["id"]: s for s in d["services"]}
    assert svc["doc"]["gpus"] == [0, 1] and svc["doc"]["gpu_mb"] == {"0": 5000, "1": 1500} and svc["doc"]["vram_mb"] == 6500
    assert svc["emb"]["gpus"] == [0] and svc["big"]["gpus"] == [] and svc["big"]["gpu_mb"] == {}

    code, out, err = h.inv("status", "--watch", "--count", "1", "--interval", "0.1")
    assert code == 0, err
    assert f"GPU0 {NAME}  7500 / 24564 MB used" in out and f"GPU1 {NAME}  2200 / 24564 MB used" in out
    assert "GPU0,1" in out

    code, out, err = h.inv("mode.status")
    assert code == 0, err
    assert "GPU used now: GPU0 7500 / 24564 MB, GPU1 2200 / 24564 MB" in out and "GPU0,1" in out


def test_mcp_tools_give_per_gpu_figures(two_gpu_rag):
    from test_mcp_model import call_all, payload

    h, doc_pid, foreign = two_gpu_rag

    async def script(s):
        return {"status": payload(await s.call_tool("gpu_mode_status", {})),
                "svc": payload(await s.call_tool("service_status", {"service_id": "doc"})),
                "sim": payload(await s.call_tool("simulate_mode", {"mode": "rag"}))}

    out = call_all(script)
    st = out["status"]
    assert [(g["index"], g["used_mb"], g["services"]) for g in st["gpus"]] == [(0, 7500, {"emb": 2500, "doc": 5000}), (1, 2200, {"doc": 1500})]
    assert st["gpus"][1]["other_processes"] == {str(foreign): 700}
    assert out["svc"]["gpus"] == [0, 1] and out["svc"]["gpu_mb"] == {"0": 5000, "1": 1500}
    # a fit that places nothing per GPU says so (its placement and per-GPU figures are empty)
    assert out["sim"]["fits"] is True and "placement" in out["sim"] and "gpus" in out["sim"]


def test_simulate_places_on_the_declared_gpus_with_a_bar_each(sim_host):
    declare_two_gpus(sim_host.root / "inventory" / "hosts.yaml")
    code, out, err = sim_host.inv("mode.simulate", "--name", "chat", "--add", "doc")
    assert code == 0, err + out
    assert "Fits on 2 GPUs: 16500 / 49128 MB" in out
    bars = dict(re.findall(r"^(GPU\d) (\[.*\])$", out, re.M))
    assert set(bars) == {"GPU0", "GPU1"} and not re.search(r"^VRAM \[", out, re.M)
    code, out, err = sim_host.inv("mode.simulate", "--name", "chat", "--add", "doc", "--json")
    d = json.loads(out)
    assert d["fits"] is True and sorted(d["placement"]) == ["big", "doc", "emb"]
    assert [g["index"] for g in d["gpus"]] == [0, 1] and all(len(ix) == 1 for ix in d["placement"].values())
    placed = {sid: mb for g in d["gpus"] for sid, mb in g["services"].items()}
    assert placed == {"emb": 2500, "big": 9000, "doc": 5000}
    for g in d["gpus"]:
        assert g["projected_mb"] == sum(g["services"].values()) and g["total_mb"] == 24564
    # 46000 MB of 49128 in total, but no placement holds it: refused per GPU, exit 1
    for sid in ("h1", "h2"):
        sim_host.write_preset("chat", sid, f"id: {sid}\nname: {sid}\ndriver: vllm\nport: {9000 + int(sid[1])}\nvram_mb: 20000\n")
    code, out, err = sim_host.inv("mode.simulate", "--services", "h1,h2,router")
    assert code == 1 and "Does not fit" in out, err + out
    d = json.loads(sim_host.inv("mode.simulate", "--services", "h1,h2,router", "--json")[1])
    assert d["fits"] is False and d["refusal"] and d["total_mb"] == 46000


def test_one_simulated_gpu_keeps_todays_status(sim_host):
    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0
    code, out, err = sim_host.inv("status")
    assert code == 0, err
    assert f"{NAME}  7500 / 24564 MB used" in out and "GPU0" not in out and "GPUs" not in out
    d = json.loads(sim_host.inv("status", "--json")[1])
    assert len(d["gpus"]) == 1 and d["gpus"][0]["services"] == {"emb": 2500, "doc": 5000}
    assert {s["id"]: s["gpu_mb"] for s in d["services"]}["doc"] == {"0": 5000}


def test_the_daemon_labels_gpu_use_by_gpu(two_gpu_rag, daemon_factory):
    h, doc_pid, foreign = two_gpu_rag
    d = daemon_factory()
    models = d.get("/models").json()
    m = {x["id"]: x for x in models["models"]}
    assert m["doc"]["gpus"] == [0, 1] and m["doc"]["gpu_mb"] == {"0": 5000, "1": 1500}
    assert m["emb"]["gpus"] == [0] and m["big"]["gpus"] == []
    assert [(g["index"], g["used_mb"]) for g in models["gpus"]] == [(0, 7500), (1, 2200)]
    text = d.get("/metrics").text
    samples = dict(re.findall(r"^(gpumod_(?:gpu|service_vram|vram)_\S+) (\S+)$", text, re.M))
    assert samples['gpumod_gpu_used_mb{gpu="0"}'] == "7500.0" and samples['gpumod_gpu_used_mb{gpu="1"}'] == "2200.0"
    assert samples['gpumod_gpu_total_mb{gpu="1"}'] == "24564.0" and samples['gpumod_gpu_other_mb{gpu="1"}'] == "700.0"
    assert samples['gpumod_service_vram_mb{gpu="0",service="doc"}'] == "5000.0"
    assert samples['gpumod_service_vram_mb{gpu="1",service="doc"}'] == "1500.0"
    assert 'gpumod_service_vram_mb{gpu="1",service="emb"}' not in samples
    # the series of before stay, summed over the GPUs
    assert samples["gpumod_vram_used_mb"] == "9700.0" and samples["gpumod_vram_total_mb"] == "49128.0"


def test_the_dashboard_draws_a_bar_per_gpu(two_gpu_rag, daemon_factory, browser, artifacts):
    from test_web_ui import shot, wait_for

    h, doc_pid, foreign = two_gpu_rag
    d = daemon_factory()
    browser.get(d.url + "/ui")

    def gpus():
        return browser.execute_script("""return [...document.querySelectorAll('#gpus .gpu')].map(g => [g.dataset.index,
            g.querySelector('h3').textContent,
            Object.fromEntries([...g.querySelectorAll('.bar.measured .seg')].map(s => [s.dataset.service, parseInt(s.dataset.mb)]))])""")

    shown = wait_for(lambda: len(gpus()) == 2 and gpus(), what="two GPUs on the page")
    assert [(i, segs) for i, _, segs in shown] == [("0", {"emb": 2500, "doc": 5000}), ("1", {"doc": 1500, "(other)": 700})]
    assert shown[1][1] == f"GPU 1: {NAME} — 2200 / 24564 MB used"
    assert browser.execute_script("return document.querySelector('tr[data-service=doc] td.gpus').textContent") == "0,1"
    assert browser.execute_script("return document.querySelector('tr[data-service=doc] td.gpus').title") == "GPU 0: 5000 MB, GPU 1: 1500 MB"
    shot(browser, artifacts, "dashboard-two-gpus.png")


CHARGE_IN_BOX = (
    "import os, sys\nsys.path.insert(0, sys.argv[1])\nfrom gpumod_tasks.sim.ledger import Ledger\n"
    "if not os.path.exists(sys.argv[2]):\n    Ledger.create(sys.argv[2], name=sys.argv[3], total_mb=24564, index=1, release_lag_s=0.0)\n"
    "Ledger(sys.argv[2]).alloc(int(sys.argv[4]), int(sys.argv[5]), tag='tp-rank-1')\n")


@pytest.mark.systemd
def test_status_over_ssh_shows_the_boxs_two_gpus(ssh_lab, tmp_path):
    from conftest import REPO

    lab = ssh_lab
    box = lab.boxes[0]
    declare_two_gpus(lab.sim.root / "inventory" / "hosts.yaml")
    assert lab.inv("-H", "box1", "mode.switch", "--name", "rag")[0] == 0
    code, out, err = lab.inv("-H", "box1", "status", "--json")
    assert code == 0, err
    doc_pid = {s["id"]: s["pid"] for s in json.loads(out)["services"]}["doc"]
    # the second GPU is charged from inside the box, where the ledger's pids are the box's own
    box.sd.run(["python3", "-c", CHARGE_IN_BOX, str(REPO), f"{tmp_path}/box1-state/sim/gpu1.json", NAME, str(doc_pid), "1500"])
    code, out, err = lab.inv("-H", "box1", "status", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert [(g["index"], g["used_mb"], g["services"]) for g in d["gpus"]] == [(0, 7500, {"emb": 2500, "doc": 5000}), (1, 1500, {"doc": 1500})]
    assert {s["id"]: s["gpus"] for s in d["services"]}["doc"] == [0, 1]
    code, out, err = lab.inv("-H", "box1", "status")
    assert code == 0, err
    assert f"GPU0 {NAME}  7500 / 24564 MB used" in out and f"GPU1 {NAME}  1500 / 24564 MB used" in out
    assert re.search(r"│ doc +│ running +│ +\d+ +│ +6500 +│ GPU0,1 +│", out), out
