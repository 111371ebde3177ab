"""The observation's per-GPU attribution (pure): every (process, GPU) pair to its owner."""

from __future__ import annotations

from gpumod_tasks.facts.gpu import Gpu, GpuFacts, parse_nvidia_smi
from gpumod_tasks.facts.gpu_read import parse_used_per_gpu
from gpumod_tasks.observe import attribute

# what nvidia-smi prints on a box with two GPUs: a vLLM TP=2 (main pid 100 on GPU0, worker 101
# on GPU1), a llama.cpp split (one pid 200 on both), a foreign process on GPU1, an exiting one
SMI = """0, GPU-aaaa, NVIDIA RTX 4090, 24564, 21000, 3564
1, GPU-bbbb, NVIDIA RTX 4090, 24564, 14000, 10564
--gpumod-compute-apps--
GPU-aaaa, 100, 9000
GPU-bbbb, 101, 9000
GPU-aaaa, 200, 3000
GPU-bbbb, 200, 1000
GPU-bbbb, 300, 4000
GPU-aaaa, 400, 9000
"""


def test_each_process_counts_on_every_gpu_it_uses():
    facts = parse_nvidia_smi(SMI)
    vram, unmapped, foreign, releasing = attribute(
        facts, pid_owner={100: "tp", 200: "split"}, by_cgroup={101: "tp"}, pstate={101: "S", 300: "S", 400: "Z"},
        running={"tp", "split"}, last_run={400: "old"})
    assert vram == {"tp": {0: 9000, 1: 9000}, "split": {0: 3000, 1: 1000}}
    assert unmapped == {300: 4000} and foreign == {1: 4000}
    assert [(r.pid, r.mb, r.service, r.gpu_mb) for r in releasing] == [(400, 9000, "old", {0: 9000})]


def test_a_foreign_process_on_two_gpus_is_summed_per_gpu():
    facts = GpuFacts("t", (Gpu(0, "a", 100, 10, 90, "u0", {7: 6}), Gpu(1, "b", 100, 10, 90, "u1", {7: 4})))
    _, unmapped, foreign, _ = attribute(facts, {}, {}, {7: "S"}, set(), {})
    assert unmapped == {7: 10} and foreign == {0: 6, 1: 4}


def test_used_per_gpu_parses_index_and_used():
    assert parse_used_per_gpu("0, 120\n1, 80\n") == {0: 120, 1: 80}
    assert parse_used_per_gpu("0, [N/A]\n") == {0: 0}
