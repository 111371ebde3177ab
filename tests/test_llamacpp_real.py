"""The bundled llama.cpp presets as real units: the real llama-server (built from source) under a
private systemd, on a simulated GPU whose ledger the meter charges from the router's own view."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from conftest import REPO, box_inventory, run_cli

from gpumod_tasks.catalog import load_catalog
from gpumod_tasks.engines.llamacpp import router_model_name
from gpumod_tasks.llamacpp.gguf_tiny import write_tiny_gguf

pytestmark = pytest.mark.systemd


def bundled_catalog_on_free_ports(home):
    """A copy of the bundled catalog whose ports are free ones (the same preset files otherwise), so
    that services already running on this machine, say the demo's, cannot collide with the test."""
    import re
    import shutil

    from conftest import free_ports

    for d in ("presets", "modes", "templates"):
        shutil.copytree(REPO / d, home / d)
    files = sorted((home / "presets").rglob("*.yaml"))
    ports = sorted({int(re.search(r"^port: (\d+)$", f.read_text(), re.M).group(1)) for f in files})
    remap = dict(zip(ports, free_ports(len(ports))))  # a shared router's presets keep one port
    for f in files:
        f.write_text(re.sub(r"^port: (\d+)$", lambda m: f"port: {remap[int(m.group(1))]}", f.read_text(), flags=re.M))
    return load_catalog(home)


@pytest.fixture
def real_box(systemd_box, tmp_path, monkeypatch, llama_server_bin):
    home = tmp_path / "catalog"
    cat = bundled_catalog_on_free_ports(home)
    llama = [p for p in cat.presets.values() if p.driver.value == "llamacpp"]
    models = tmp_path / "models"
    for i, p in enumerate(llama):  # the bundled presets' file names, tiny weights
        write_tiny_gguf(models / f"{router_model_name(p)}.gguf", seed=i)
    inv = "hosts:\n" + box_inventory("box", tmp_path / "box.pid", tmp_path / "real-state", "/run/systemd/system", {
        "sim_real": "[llamacpp]",
        "vars": json.dumps({"llama_server_bin": str(llama_server_bin), "models_dir": str(models)}),
    })
    (tmp_path / "hosts.yaml").write_text(inv)
    monkeypatch.setenv("GPUMOD_HOME", str(home))
    monkeypatch.setenv("GPUMOD_INVENTORY", str(tmp_path / "hosts.yaml"))
    yield systemd_box, cat


def inv(*argv):
    return run_cli(["-H", "box", *argv])


ROUTER_MODELS = ("devstral-small-2-24b", "qwen2.5-coder-7b-instruct-q4_k_m")  # the `code` router's presets


def router_view(port):
    """The router's own statuses of the `code` router's models (the directory holds gemma's file too)."""
    data = httpx.get(f"http://127.0.0.1:{port}/models", timeout=5, trust_env=False).json()["data"]
    return {m["id"]: m["status"]["value"] for m in data if m["id"] in ROUTER_MODELS}


def test_real_router_switch_between_modes_sharing_it(real_box, llama_server_bin):
    box, cat = real_box
    code, out, err = inv("template.install-all")
    assert code == 0, err
    unit = box.sd.run(["cat", "/run/systemd/system/gpumod-router-code.service"]).stdout
    port = cat.presets["glm-code"].port
    assert f"-- {llama_server_bin} --host 127.0.0.1 --port {port} --models-dir" in unit
    assert "--models-max 1 --no-models-autoload" in unit and 'Environment="GGML_CUDA_NO_PINNED=1"' in unit

    code, out, err = inv("mode.switch", "--name", "code", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert sorted(s["service"] for s in rep["summary"]["Started"]) == ["glm-code", "vllm-embedding-code"]
    # the real router's own view: the switch returned only once it said "loaded"
    assert router_view(port) == {"devstral-small-2-24b": "loaded", "qwen2.5-coder-7b-instruct-q4_k_m": "unloaded"}
    main = box.sd.show("gpumod-router-code.service", "MainPID", "ActiveState")
    assert main["ActiveState"] == "active"
    code, out, err = inv("status", "--json")
    st = json.loads(out)
    assert st["gpu"]["used_mb"] == 2500 + 19100  # the meter charged the preset's figure for the loaded model

    t0 = time.perf_counter()
    code, out, err = inv("mode.switch", "--name", "code-lite", "--json")
    wall = time.perf_counter() - t0
    assert code == 0, err
    rep = json.loads(out)
    print(f"\nreal router switch code -> code-lite: {rep['duration_s']:.3f} s switch, {wall:.3f} s in-process command; "
          f"wake of qwen-coder {rep['summary']['Woken'][0]['seconds']:.3f} s")
    assert [s["service"] for s in rep["summary"]["Slept"]] == ["glm-code"]  # POST /models/unload
    assert [s["service"] for s in rep["summary"]["Woken"]] == ["qwen-coder"]  # POST /models/load, then "loaded"
    assert router_view(port) == {"devstral-small-2-24b": "unloaded", "qwen2.5-coder-7b-instruct-q4_k_m": "loaded"}
    # the router process was not restarted: sleep and wake were model loads in the same unit
    assert box.sd.show("gpumod-router-code.service", "MainPID")["MainPID"] == main["MainPID"]
    code, out, err = inv("mode.status", "--json")
    svc = {s["id"]: s for s in json.loads(out)["services"]}
    assert svc["qwen-coder"]["state"] == "running" and svc["glm-code"]["state"] == "sleeping"
    assert svc["qwen-coder"]["router_status"] == "loaded" and svc["glm-code"]["router_status"] == "unloaded"
    code, out, err = inv("mode.status")
    assert code == 0 and "router: loaded" in out and "router: unloaded" in out
    time.sleep(0.4)  # the release lag of the unloaded model
    code, out, err = inv("status", "--json")
    assert json.loads(out)["gpu"]["used_mb"] == 2500 + 7200 + 5000
    # a chat through the real router answers (nonsense text from random weights)
    r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", trust_env=False, timeout=30,
                   json={"model": "qwen2.5-coder-7b-instruct-q4_k_m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["choices"]


def test_single_model_real_unit_accepts_every_rendered_flag(real_box):
    box, cat = real_box
    code, out, err = inv("service.start", "--service-id", "gemma-agent")
    assert code == 0, err
    unit = box.sd.run(["systemctl", "cat", "gpumod-gemma-agent.service"]).stdout
    for flag in ("--ctx-size 65536", "--n-gpu-layers 999", "--parallel 4", "--alias gemma-agent"):
        assert flag in unit
    assert box.sd.show("gpumod-gemma-agent.service", "ActiveState")["ActiveState"] == "active"
    r = httpx.get(f"http://127.0.0.1:{cat.presets['gemma-agent'].port}/health", trust_env=False, timeout=5)
    assert r.status_code == 200
    code, out, err = inv("status", "--json")
    st = json.loads(out)
    assert {s["id"]: s["state"] for s in st["services"]}["gemma-agent"] == "running"
    assert st["gpu"]["used_mb"] == 20000
    code, out, err = inv("service.stop", "--service-id", "gemma-agent")
    assert code == 0, err
    assert box.sd.show("gpumod-gemma-agent.service", "ActiveState")["ActiveState"] == "inactive"


def test_router_daemon_in_front_of_the_real_llama_server(real_box):
    """The daemon's upstream pool against llama.cpp's own HTTP server (keep-alive, chunked SSE),
    and a request by the router's own model name that needs a mode switch."""
    from routerd import start_daemon

    box, cat = real_box
    assert inv("template.install-all")[0] == 0
    code, out, err = inv("mode.switch", "--name", "code")
    assert code == 0, err
    d = start_daemon("box", reconcile_s=60)
    try:
        body = {"model": "glm-code", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(12):  # sequential, on kept-alive connections
            r = d.post("/v1/chat/completions", body)
            assert r.status_code == 200 and r.json()["choices"], r.text
        # a fixed seed: the tiny model's sampled tokens can be partial UTF-8, which llama-server holds
        # back instead of streaming; an unseeded draw sometimes gave no content chunk at all
        body = {**body, "stream": True, "max_tokens": 8, "seed": 7}
        with httpx.stream("POST", d.url + "/v1/chat/completions", json=body, timeout=60, trust_env=False) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = [line for line in r.iter_lines() if line.startswith("data:")]
        assert events[-1] == "data: [DONE]" and len(events) >= 3, events
        # qwen-coder, asked by the name the router gives it, is in code-lite only: one switch, then served
        r = d.post("/v1/chat/completions", {"model": "qwen2.5-coder-7b-instruct-q4_k_m", "max_tokens": 2,
                                            "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["choices"], r.text
        assert d.get("/models").json()["mode"] == "code-lite"
        assert router_view(cat.presets["glm-code"].port) == {"devstral-small-2-24b": "unloaded",
                                                              "qwen2.5-coder-7b-instruct-q4_k_m": "loaded"}
    finally:
        d.stop()
