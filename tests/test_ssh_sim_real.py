"""A remote simulated box that runs the real llama-server (``sim_real: [llamacpp]``): the box gets
the whole simulator package over SSH, and the meter charges the box's ledger from the real
router's own view."""

from __future__ import annotations

import json

import pytest
from conftest import ssh_inventory

from gpumod_tasks.llamacpp.gguf_tiny import write_tiny_gguf
from gpumod_tasks.simhost import REMOTE_PACKAGE, sim_package_files

pytestmark = pytest.mark.systemd


def test_remote_simulated_host_runs_the_real_llama_server_under_the_meter(ssh_lab, tmp_path, llama_server_bin):
    lab = ssh_lab
    box = lab.boxes[0]
    models = tmp_path / "models"
    write_tiny_gguf(models / "router.gguf", seed=3)  # the `router` preset's model, by its id
    inv = lab.sim.root / "inventory" / "hosts.yaml"
    inv.write_text(ssh_inventory(lab.boxes, tmp_path, {
        "sim_real": "[llamacpp]",
        "vars": json.dumps({"llama_server_bin": str(llama_server_bin), "models_dir": str(models)}),
    }))
    code, out, err = lab.inv("-H", "box1", "mode.switch", "--name", "code", "--json")
    journal = box.sd.run(["journalctl", "-u", "gpumod-router.service", "--no-pager", "-n", "30"], check=False).stdout
    assert code == 0, err + out + journal
    assert sorted(s["service"] for s in json.loads(out)["summary"]["Started"]) == ["emb", "router"]

    # every module of the simulator package reached the box, the meter's among them
    lib = f"{tmp_path}/box1-state/sim/lib/{REMOTE_PACKAGE}"
    shipped = set(box.sd.run(["sh", "-c", f'cd {lib} && find . -name "*.py" | sed "s|^./||"']).stdout.split())
    assert "meter.py" in shipped and set(sim_package_files()) <= shipped
    # the unit is the meter in front of the real server, run by the box's own python3
    unit = box.sd.run(["cat", "/run/systemd/system/gpumod-router.service"]).stdout
    assert "python3 -m gpumod_sim.meter" in unit and f"-- {llama_server_bin} --host 127.0.0.1" in unit, unit

    code, out, err = lab.inv("-H", "box1", "mode.status", "--json")
    assert code == 0, err
    svc = {s["id"]: s for s in json.loads(out)["services"]}
    assert svc["router"]["state"] == "running" and svc["router"]["router_status"] == "loaded", svc["router"]
    code, out, err = lab.inv("-H", "box1", "status", "--json")
    assert code == 0, err
    assert json.loads(out)["gpu"]["used_mb"] == 2500 + 6000  # emb's stand-in + the metered router model
    # leaving the mode unloads the model in the real router (POST /models/unload), seen the same way
    assert lab.inv("-H", "box1", "mode.switch", "--name", "rag")[0] == 0
    code, out, err = lab.inv("-H", "box1", "mode.status", "--json")
    svc = {s["id"]: s for s in json.loads(out)["services"]}
    assert svc["router"]["router_status"] == "unloaded", svc["router"]
