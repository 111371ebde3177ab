"""The multi-GPU keys of a preset: gpus, vLLM tensor_parallel, gpu pinning, llama.cpp tensor_split."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumod_tasks.catalog import load_catalog
from gpumod_tasks.errors import CatalogError

VLLM = "id: a\nname: A\ndriver: vllm\nport: 9001\nvram_mb: 1000\n"
LLAMA = "id: a\nname: A\ndriver: llamacpp\nport: 9001\nvram_mb: 1000\n"
FAST = "id: a\nname: A\ndriver: fastapi\nport: 9001\nvram_mb: 1000\n"


def load(tmp_path: Path, text: str):
    (tmp_path / "presets" / "x").mkdir(parents=True, exist_ok=True)
    (tmp_path / "presets" / "x" / "a.yaml").write_text(text)
    (tmp_path / "modes").mkdir(exist_ok=True)
    return load_catalog(tmp_path).presets["a"]


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(CatalogError) as ei:
        load(tmp_path, text)
    return [str(p) for p in ei.value.problems]


def test_todays_presets_run_on_one_gpu_any(tmp_path):
    p = load(tmp_path, VLLM)
    assert (p.gpus, p.gpu_pin, p.tensor_split) == (1, (), ())
    assert p.per_gpu_mb(1000) == (1000,)


@pytest.mark.parametrize("extra, want", [
    ("gpus: 2\n", (2, (), ())),
    ("tensor_parallel: 2\n", (2, (), ())),
    ("gpus: 2\ntensor_parallel: 2\n", (2, (), ())),
    ("gpu: 1\n", (1, ("1",), ())),
    ("gpu: [0, 1]\n", (2, ("0", "1"), ())),
    ("gpu: GPU-1f3a-77\n", (1, ("GPU-1f3a-77",), ())),
    ("gpus: 2\ngpu: [1, GPU-abc]\n", (2, ("1", "GPU-abc"), ())),
])
def test_vllm_keys(tmp_path, extra, want):
    p = load(tmp_path, VLLM + extra)
    assert (p.gpus, p.gpu_pin, p.tensor_split) == want


def test_llamacpp_tensor_split_sets_the_count_and_splits_the_total(tmp_path):
    p = load(tmp_path, LLAMA + "tensor_split: [3, 1]\n")
    assert (p.gpus, p.tensor_split) == (2, (3.0, 1.0))
    assert p.per_gpu_mb(1000) == (750, 250)


def test_an_old_cuda_visible_devices_setting_reads_as_the_pin(tmp_path):
    p = load(tmp_path, VLLM + "unit_vars:\n  cuda_visible_devices: '1'\n")
    assert (p.gpus, p.gpu_pin) == (1, ("1",))
    p = load(tmp_path, VLLM + "unit_vars:\n  cuda_visible_devices: '0,1'\n")
    assert (p.gpus, p.gpu_pin) == (2, ("0", "1"))


@pytest.mark.parametrize("base, extra, want", [
    (VLLM, "gpus: 0\n", "presets/x/a.yaml:6:7: gpus: must be >= 1, got 0"),
    (VLLM, "gpus: two\n", "presets/x/a.yaml:6:7: gpus: expected an integer"),
    (VLLM, "gpus: 3\ngpu: [0, 1]\n", "presets/x/a.yaml:7:6: gpu: pins 2 GPUs (0, 1) but the preset runs on 3"),
    (VLLM, "gpus: 2\ntensor_parallel: 4\n", "presets/x/a.yaml:7:18: tensor_parallel: 4 differs from gpus: 2"),
    (LLAMA, "tensor_parallel: 2\n", "presets/x/a.yaml:6:18: tensor_parallel: only valid with driver vllm"),
    (FAST, "tensor_split: [1, 1]\n", "presets/x/a.yaml:6:15: tensor_split: only valid with driver llamacpp"),
    (LLAMA, "gpus: 3\ntensor_split: [3, 1]\n", "presets/x/a.yaml:7:15: tensor_split: has 2 ratios but the preset runs on 3"),
    (LLAMA, "tensor_split: [1, x]\n", "presets/x/a.yaml:6:19: tensor_split[1]: expected a ratio"),
    (LLAMA, "tensor_split: [0, 0]\n", "presets/x/a.yaml:6:15: tensor_split: ratios add up to 0"),
    (VLLM, "gpu: -1\n", "presets/x/a.yaml:6:6: gpu: GPU index -1 is outside 0-63"),
    (VLLM, "gpu: first\n", "presets/x/a.yaml:6:6: gpu: expected a GPU index (0, 1, ...) or a GPU UUID"),
    (VLLM, "gpu: [0, 0]\n", "presets/x/a.yaml:6:6: gpu: names a GPU twice: 0, 0"),
    (VLLM, "gpu: []\n", "presets/x/a.yaml:6:6: gpu: is an empty list"),
    (VLLM, "gpu: [0, true]\n", "presets/x/a.yaml:6:10: gpu[1]: expected a GPU index"),
])
def test_bad_values_name_file_line_and_field(tmp_path, base, extra, want):
    got = problems(tmp_path, base + extra)
    assert any(g.startswith(want) for g in got), got


def test_models_of_one_router_agree_on_their_gpus(tmp_path):
    base = "name: M\ndriver: llamacpp\nport: 9004\nvram_mb: 1000\nsupports_sleep: true\nsleep_mode: router\nrouter: code\n"
    (tmp_path / "presets" / "x").mkdir(parents=True)
    (tmp_path / "presets" / "x" / "m1.yaml").write_text("id: m1\n" + base + "gpus: 2\n")
    (tmp_path / "presets" / "x" / "m2.yaml").write_text("id: m2\n" + base)
    (tmp_path / "modes").mkdir()
    with pytest.raises(CatalogError) as ei:
        load_catalog(tmp_path)
    assert any("presets/x/m2.yaml" in str(p) and "every model of a router is one process" in str(p) for p in ei.value.problems)
