"""The bundled homeGPT example, run: the repo's own examples/homegpt catalog on a host with two
simulated 80 GB GPUs; each mode's model runs with tensor parallel 2 (a worker pid per GPU), the one
before it sleeps with its residual split over both GPUs, and sim.reset empties both."""

from __future__ import annotations

import re
import shutil

import pytest
from conftest import REPO, free_ports

from gpumod_tasks.sim.ledger import ledgers

H100 = "NVIDIA H100 80GB HBM3"


def _units_carry_tensor_parallel() -> str | None:
    """Why this cannot run yet: the catalog must load the multi-GPU keys and a TP=2 preset's
    stand-in must be rendered with --tensor-parallel-size (None when both hold)."""
    from gpumod_tasks.catalog import load_catalog
    from gpumod_tasks.errors import CatalogError
    from gpumod_tasks.hostfacts import HostFacts
    from gpumod_tasks.inventory import HostSpec
    from gpumod_tasks.render import exec_spec

    try:
        cat = load_catalog(REPO / "examples" / "homegpt")
    except CatalogError as exc:
        details = exc.details()
        return "the catalog does not load the multi-GPU keys yet: " + next((d for d in details if "presets/" in d), details[0])
    try:
        spec = exec_spec(cat.presets["hg-chat"], HostSpec(name="hg", sim=True), HostFacts(81559, True, "/tmp/x"))
    except Exception as exc:  # noqa: BLE001 - the renderer's placement seam is not there yet
        return f"units cannot be rendered without a placement yet: {exc}"
    if "--tensor-parallel-size" not in spec.argv:
        return "units do not carry --tensor-parallel-size yet"
    return None


def test_the_homegpt_example_switches_tp2_models_one_awake_at_a_time(sim_host):
    why = _units_carry_tensor_parallel()
    if why:
        pytest.skip(why)
    dst = sim_host.root / "examples" / "homegpt"
    shutil.copytree(REPO / "examples" / "homegpt", dst)
    for f, port in zip(sorted((dst / "presets").glob("*.yaml")), free_ports(4)):  # free ports, not 8100-8103
        f.write_text(re.sub(r"^port: \d+", f"port: {port}", f.read_text(), flags=re.M))
    sim_host.write_inventory(
        "  hg:\n    connection: local\n    sim: true\n    service_manager: supervisor\n"
        f"    state_dir: {sim_host.state}\n    catalog: examples/homegpt\n"
        f"    gpus: {{count: 2, name: {H100}, total_mb: 81559}}\n"
        "    sim_timings: {load_s: 0.2, wake_l1_s: 0.05, wake_l2_s: 0.2, release_lag_s: 0.25}\n"
        "    release_timeout_s: 10\n")
    sim_dir = sim_host.state / "sim"

    def per_gpu() -> list[dict[int, int]]:
        return [led.snapshot().per_pid for led in ledgers(sim_dir)]

    try:
        code, out, err = sim_host.inv("-H", "hg", "mode.switch", "--name", "chat")
        assert code == 0, err + out
        chat = per_gpu()
        assert [sum(g.values()) for g in chat] == [68000, 68000]
        assert len({p for g in chat for p in g}) == 2  # one worker pid per GPU
        code, out, err = sim_host.inv("-H", "hg", "mode.switch", "--name", "code")
        assert code == 0, err + out
        # hg-chat asleep: its 4916 MB residual is 2458 on each GPU, beside hg-coder's 68000 each
        assert [sum(g.values()) for g in per_gpu()] == [70458, 70458]
        assert all(g[p] == 2458 for g, p in zip(per_gpu(), (next(iter(chat[0])), next(iter(chat[1])))))
    finally:
        code, out, err = sim_host.inv("-H", "hg", "sim.reset")
    assert code == 0, err + out
    assert [sum(g.values()) for g in per_gpu()] == [0, 0]
