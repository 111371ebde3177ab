"""Catalog parsing and every validation error, with file:line:column and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumod_tasks.catalog import Driver, SleepMode, load_catalog
from gpumod_tasks.errors import CatalogError


def test_bundled_catalog_carries_the_real_figures(repo_catalog):
    c = repo_catalog
    assert c.presets["vllm-embedding-code"].vram_mb == 2500
    assert c.presets["vllm-embedding"].vram_mb == 5000
    g = c.presets["glm-code"]
    assert (g.driver, g.port, g.vram_mb, g.context_size, g.kv_cache_per_1k, g.sleep_mode) == (
        Driver.LLAMACPP, 7070, 19100, 32768, 170, SleepMode.ROUTER)
    assert c.presets["vllm-chat"].sleep_mode is SleepMode.L1
    assert c.presets["vllm-hyde"].sleep_mode is SleepMode.L2
    assert c.presets["vllm-reranker"].sleep_mode is SleepMode.L2
    assert c.presets["vllm-tts"].sleep_mode is SleepMode.NONE
    assert c.presets["qwen3-asr"].driver is Driver.FASTAPI and c.presets["qwen3-asr"].sleep_mode is SleepMode.L1
    assert c.presets["gemma-agent"].vram_mb == 20000 and not c.presets["gemma-agent"].can_sleep
    assert {m: c.mode_vram(c.modes[m]) for m in ("blank", "rag", "hermes-agent")} == {"blank": 0, "rag": 7500, "hermes-agent": 22500}
    assert c.modes["code"].service_ids == ("vllm-embedding-code", "glm-code")
    assert c.presets["glm-code"].category == "code"


def _root(tmp_path: Path, presets: dict[str, str], modes: dict[str, str]) -> Path:
    for rel, text in presets.items():
        p = tmp_path / "presets" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (tmp_path / "modes").mkdir(exist_ok=True)
    for rel, text in modes.items():
        (tmp_path / "modes" / rel).write_text(text)
    return tmp_path


GOOD = "id: a\nname: A\ndriver: vllm\nport: 9001\nvram_mb: 100\n"


def problems(tmp_path: Path, presets: dict[str, str], modes: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(CatalogError) as ei:
        load_catalog(_root(tmp_path, presets, modes or {}))
    return [str(p) for p in ei.value.problems]


def test_valid_minimal_catalog(tmp_path):
    c = load_catalog(_root(tmp_path, {"x/a.yaml": GOOD}, {"m.yaml": "id: m\nname: M\nservices: [a]\n"}))
    assert c.presets["a"].category == "x" and c.modes["m"].service_ids == ("a",)


def test_unknown_key_and_wrong_types_all_reported_with_positions(tmp_path):
    text = "id: a\nname: A\ndriver: vllm\nport: '9001'\nvram_mb: 100\nvram_gb: 3\nsupports_sleep: yes please\n"
    got = problems(tmp_path, {"x/a.yaml": text})
    assert "presets/x/a.yaml:4:7: port: expected an integer, got a string ('9001')" in got
    assert any(g.startswith("presets/x/a.yaml:6:1: vram_gb: unknown key") for g in got)
    assert any(g.startswith("presets/x/a.yaml:7:17: supports_sleep: expected true or false") for g in got)
    assert len(got) == 3


def test_missing_required_and_bad_enum(tmp_path):
    got = problems(tmp_path, {"x/a.yaml": "id: a\ndriver: tgi\nport: 9001\nvram_mb: 1\n"})
    assert any("name: required field is missing" in g for g in got)
    assert any(g.startswith("presets/x/a.yaml:2:9: driver: 'tgi' is not one of: vllm, llamacpp, fastapi, docker") for g in got)


def test_bad_id_is_rejected_because_ids_reach_unit_names(tmp_path):
    got = problems(tmp_path, {"x/a.yaml": GOOD.replace("id: a", "id: 'a; rm -rf /'")})
    assert any("presets/x/a.yaml:1:5: id: 'a; rm -rf /' is not a valid id" in g for g in got)


def test_duplicate_ids_across_files(tmp_path):
    got = problems(tmp_path, {"x/a.yaml": GOOD, "y/b.yaml": GOOD.replace("9001", "9002")})
    assert any("duplicate preset id 'a' (also defined in presets/x/a.yaml)" in g for g in got)


def test_duplicate_yaml_key_names_line(tmp_path):
    got = problems(tmp_path, {"x/a.yaml": GOOD + "port: 9003\n"})
    assert any(g.startswith("presets/x/a.yaml:6:") and "duplicate key" in g for g in got), got


def test_mode_with_unknown_service_and_port_clash(tmp_path):
    presets = {"x/a.yaml": GOOD, "x/b.yaml": GOOD.replace("id: a", "id: b")}
    modes = {"m.yaml": "id: m\nname: M\nservices:\n  - a\n  - b\n  - ghost\n"}
    got = problems(tmp_path, presets, modes)
    assert "modes/m.yaml:5:5: services[1]: port 9001 of 'b' is already used by 'a' in this mode" in got
    assert "modes/m.yaml:6:5: services[2]: unknown service 'ghost'" in got


def test_dependency_cycle_and_unknown_dependency(tmp_path):
    a = GOOD + "depends_on: [b]\n"
    b = GOOD.replace("id: a", "id: b").replace("9001", "9002") + "depends_on: [a, nope]\n"
    got = problems(tmp_path, {"x/a.yaml": a, "x/b.yaml": b})
    assert any("dependency cycle: a -> b -> a" in g for g in got)
    assert any("presets/x/b.yaml:6:17: depends_on[1]: unknown service 'nope'" in g for g in got)


def test_mode_missing_a_dependency(tmp_path):
    a = GOOD + "depends_on: [b]\n"
    b = GOOD.replace("id: a", "id: b").replace("9001", "9002")
    got = problems(tmp_path, {"x/a.yaml": a, "x/b.yaml": b}, {"m.yaml": "id: m\nname: M\nservices: [a]\n"})
    assert any("'a' depends on 'b', which this mode does not include" in g for g in got)


def test_sleep_mode_must_suit_driver(tmp_path):
    got = problems(tmp_path, {"x/a.yaml": GOOD + "sleep_mode: router\n"})
    assert any("sleep_mode: 'router' is not supported by driver vllm" in g for g in got)


def test_invalid_catalog_via_cli_exits_nonzero_and_names_file(sim_host):
    sim_host.write_preset("embedding", "emb", "id: emb\nname: x\ndriver: vllm\nport: nope\nvram_mb: 1\n")
    code, out, err = sim_host.inv("mode.list")
    assert code == 2
    assert "presets/embedding/emb.yaml:4:7: port: expected an integer" in err


def test_catalog_and_inventory_load_nothing_but_their_leaves():
    """errors, result and yamlfile are leaves: reading YAML never pulls in host code (no import circle)."""
    import json
    import subprocess
    import sys

    code = ("import sys, json; import gpumod_tasks.catalog, gpumod_tasks.inventory; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('gpumod_tasks'))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    # engines.caps: each engine's sleep modes and default residual, a table (engines/__init__ and base load no engine)
    assert json.loads(out) == ["gpumod_tasks", "gpumod_tasks.catalog", "gpumod_tasks.catalog.load", "gpumod_tasks.catalog.model",
                               "gpumod_tasks.engines", "gpumod_tasks.engines.base", "gpumod_tasks.engines.caps",
                               "gpumod_tasks.errors", "gpumod_tasks.inventory", "gpumod_tasks.result", "gpumod_tasks.yamlfile"]
