"""Units carry the placement: CUDA_VISIBLE_DEVICES (UUIDs when known), CUDA_DEVICE_ORDER, tensor
parallel and tensor split flags, docker's --gpus device=; a one-GPU box's units stay as they were."""

from __future__ import annotations

from conftest import REPO

from gpumod_tasks.catalog.model import DockerSpec, Driver, GpuAssignment, Preset
from gpumod_tasks.inventory import HostSpec
from gpumod_tasks.render import HostFacts, exec_spec, real_exec, render_unit

HOST = HostSpec(name="box", sim=False, gpu_total_mb=24000)
FACTS = HostFacts(gpu_total_mb=24000, sim=False, state_dir="/var/lib/gpumod")
SIM = HostFacts(gpu_total_mb=24000, sim=True, state_dir="/tmp/st")
TWO = GpuAssignment((0, 1), ("GPU-aaaa", "GPU-bbbb"))


def preset(**kw) -> Preset:
    base = dict(id="svc", name="Svc", driver=Driver.VLLM, port=8000, vram_mb=12000, model_id="org/model", file="p.yaml")
    base.update(kw)
    return Preset(**base)


def test_a_one_gpu_box_renders_the_unit_it_always_did():
    spec = real_exec(preset(), HOST, FACTS)
    assert dict(spec.env)["CUDA_VISIBLE_DEVICES"] == "0" and "CUDA_DEVICE_ORDER" not in dict(spec.env)
    assert "--tensor-parallel-size" not in spec.argv


def test_a_placed_service_gets_its_gpus_by_uuid_in_pci_order():
    env = dict(real_exec(preset(), HOST, FACTS, GpuAssignment((1,), ("GPU-bbbb",))).env)
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    # without UUIDs: the indices
    assert dict(real_exec(preset(), HOST, FACTS, GpuAssignment((1,))).env)["CUDA_VISIBLE_DEVICES"] == "1"
    # the host-wide default does not override a placement
    host = HostSpec(name="box", sim=False, vars={"cuda_visible_devices": "0"})
    assert dict(real_exec(preset(), host, FACTS, GpuAssignment((1,))).env)["CUDA_VISIBLE_DEVICES"] == "1"


def test_a_presets_own_cuda_visible_devices_is_kept():
    p = preset(unit_vars={"cuda_visible_devices": "1"}, gpu_pin=("1",))
    assert dict(real_exec(p, HOST, FACTS, GpuAssignment((1,), ("GPU-bbbb",))).env)["CUDA_VISIBLE_DEVICES"] == "1"


def test_vllm_tensor_parallel_and_its_per_gpu_utilization():
    spec = real_exec(preset(vram_mb=36000, gpus=2), HOST, FACTS, TWO)
    argv = list(spec.argv)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert float(argv[argv.index("--gpu-memory-utilization") + 1]) == 0.75  # 18000 of each 24000 MB GPU
    assert dict(spec.env)["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa,GPU-bbbb"


def test_llamacpp_split_and_main_gpu():
    p = preset(driver=Driver.LLAMACPP, model_path="/m/x.gguf", gpus=2, tensor_split=(3.0, 1.0))
    argv = list(real_exec(p, HOST, FACTS, TWO).argv)
    assert argv[argv.index("--tensor-split") + 1] == "3,1" and argv[argv.index("--main-gpu") + 1] == "0"
    even = list(real_exec(preset(driver=Driver.LLAMACPP, model_path="/m/x.gguf", gpus=2), HOST, FACTS, TWO).argv)
    assert even[even.index("--tensor-split") + 1] == "1,1"


def test_docker_gets_only_its_devices():
    p = preset(driver=Driver.DOCKER, docker=DockerSpec(image="img:1", ports=("8000:8000",)))
    argv = list(real_exec(p, HOST, FACTS, GpuAssignment((1,), ("GPU-bbbb",))).argv)
    assert argv[argv.index("--gpus") + 1] == "device=GPU-bbbb"
    argv = list(real_exec(p, HOST, FACTS, TWO).argv)
    assert argv[argv.index("--gpus") + 1] == '"device=GPU-aaaa,GPU-bbbb"'
    assert list(real_exec(p, HOST, FACTS).argv)[list(real_exec(p, HOST, FACTS).argv).index("--gpus") + 1] == "all"


def test_stand_ins_get_the_same_gpus_their_total_and_tp_or_split():
    spec = exec_spec(preset(vram_mb=36000, gpus=2), HOST, SIM, (), TWO)
    argv = list(spec.argv)
    assert argv[argv.index("--vram-mb") + 1] == "36000" and argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert dict(spec.env)["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa,GPU-bbbb"
    ll = list(exec_spec(preset(driver=Driver.LLAMACPP, gpus=2, tensor_split=(1.0, 3.0)), HOST, SIM, (), TWO).argv)
    assert ll[ll.index("--tensor-split") + 1] == "1,3"


def test_the_unit_text_changes_with_the_placement():
    one = render_unit(preset(), HOST, FACTS, str(REPO), real_exec(preset(), HOST, FACTS, GpuAssignment((0,), ("GPU-aaaa",))))
    other = render_unit(preset(), HOST, FACTS, str(REPO), real_exec(preset(), HOST, FACTS, GpuAssignment((1,), ("GPU-bbbb",))))
    assert one != other and "CUDA_VISIBLE_DEVICES=GPU-bbbb" in other and "CUDA_DEVICE_ORDER=PCI_BUS_ID" in other


def test_the_memory_fraction_is_of_the_gpu_it_was_placed_on():
    small = GpuAssignment((1,), ("GPU-bbbb",), (12000,))
    argv = list(exec_spec(preset(vram_mb=6000), HOST, FACTS, (), small).argv)
    assert float(argv[argv.index("--gpu-memory-utilization") + 1]) == 0.5
