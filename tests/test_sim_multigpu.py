"""A simulated host with several GPUs, for real: one ledger per GPU, the nvidia-smi shim as a
process, and the stand-ins as processes honouring CUDA_VISIBLE_DEVICES, vLLM tensor parallel (one
worker process per GPU) and llama.cpp's --tensor-split (one process on several GPUs)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_ports, wait_for
from test_sim import StandIn

from gpumod_tasks.facts.gpu import APPS_QUERY, GPU_QUERY, MARK, parse_nvidia_smi
from gpumod_tasks.sim.ledger import GpuStillHeld, Ledger, ensure_gpus, ledgers, sim_uuid

REPO = Path(__file__).resolve().parent.parent
H100 = "NVIDIA H100 80GB HBM3"


def _two_gpus(sim_dir: Path, host: str = "homegpt", lag: float = 0.2) -> list[str]:
    ensure_gpus(sim_dir, [{"name": H100, "total_mb": 81559, "uuid": sim_uuid(host, i), "release_lag_s": lag} for i in range(2)])
    return [sim_uuid(host, i) for i in range(2)]


def _shim(sim_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPUMOD_SIM_DIR": str(sim_dir), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "gpumod_tasks.sim.nvidia_smi", *args], capture_output=True, text=True, env=env)


def _apps(sim_dir: Path) -> list[tuple[str, int, int]]:
    out = _shim(sim_dir, "--query-compute-apps=gpu_uuid,pid,used_memory", "--format=csv,noheader,nounits").stdout
    return [(u, int(p), int(m)) for u, p, m in (ln.split(", ") for ln in out.splitlines())]


def _used(sim_dir: Path) -> list[int]:
    return [led.snapshot().used_mb for led in ledgers(sim_dir)]


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_uuids_are_deterministic_and_shaped_like_real_ones():
    a, b = sim_uuid("homegpt", 0), sim_uuid("homegpt", 1)
    assert a == sim_uuid("homegpt", 0) and a != b and a != sim_uuid("local", 0)
    parts = a.split("-")
    assert parts[0] == "GPU" and [len(p) for p in parts[1:]] == [8, 4, 4, 4, 12]
    assert all(c in "0123456789abcdef" for c in "".join(parts[1:]))


def test_two_declared_gpus_two_ledgers_and_the_shim_lists_both(tmp_path):
    uuids = _two_gpus(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("gpu*.json")) == ["gpu0.json", "gpu1.json"]
    r = _shim(tmp_path, "--query-gpu=index,uuid,name,memory.total,memory.used,memory.free", "--format=csv,noheader,nounits")
    assert r.stdout.splitlines() == [f"0, {uuids[0]}, {H100}, 81559, 0, 81559", f"1, {uuids[1]}, {H100}, 81559, 0, 81559"]
    assert _shim(tmp_path, "-L").stdout.splitlines() == [f"GPU {i}: {H100} (UUID: {u})" for i, u in enumerate(uuids)]
    # -i by index, by UUID, by a list; none matching: nvidia-smi's "No devices were found", exit 6
    one = _shim(tmp_path, "-i", uuids[1], "--query-gpu=index,uuid", "--format=csv,noheader")
    assert one.stdout == f"1, {uuids[1]}\n"
    assert _shim(tmp_path, "--id=0,1", "--query-gpu=index", "--format=csv,noheader").stdout == "0\n1\n"
    bad = _shim(tmp_path, "-i", "7", "--query-gpu=index", "--format=csv,noheader")
    assert (bad.returncode, bad.stdout) == (6, "No devices were found\n")
    table = _shim(tmp_path).stdout
    assert table.count("81559MiB") == 2
    # gpumod's own parser reads both GPUs from the shim's output
    Ledger(str(tmp_path / "gpu1.json")).alloc(os.getpid(), 700, "w")
    g = _shim(tmp_path, f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits").stdout
    a = _shim(tmp_path, f"--query-compute-apps={APPS_QUERY}", "--format=csv,noheader,nounits").stdout
    facts = parse_nvidia_smi(g + MARK + "\n" + a)
    assert [(x.index, x.uuid, x.used_mb, x.per_pid) for x in facts.gpus] == [(0, uuids[0], 0, {}), (1, uuids[1], 700, {os.getpid(): 700})]


def test_changing_the_declaration_keeps_charges_and_never_drops_a_held_gpu(tmp_path):
    uuids = _two_gpus(tmp_path)
    assert ensure_gpus(tmp_path, [{"name": H100, "total_mb": 81559, "uuid": u, "release_lag_s": 0.2} for u in uuids]) == []
    Ledger(str(tmp_path / "gpu1.json")).alloc(os.getpid(), 1000, "w")
    # a smaller GPU 1: updated in place, its charge still counted
    changed = ensure_gpus(tmp_path, [{"name": H100, "total_mb": m, "uuid": u, "release_lag_s": 0.2} for m, u in zip((81559, 40000), uuids)])
    assert changed == [f"simulated GPU 1: {H100} (40000 MB, {uuids[1]})"] and _used(tmp_path) == [0, 1000]
    # smaller than what it holds: kept (the stand-ins hold it), and said
    changed = ensure_gpus(tmp_path, [{"name": H100, "total_mb": m, "uuid": u, "release_lag_s": 0.2} for m, u in zip((81559, 600), uuids)])
    assert changed == [f"simulated GPU 1: {H100} (600 MB, {uuids[1]}); it holds 1000 MB, more than its new total, until its services stop"]
    assert _used(tmp_path) == [0, 1000]
    # one GPU only: GPU 1 still holds a live process's memory: refused, nothing removed
    with pytest.raises(GpuStillHeld, match=rf"gpu1.json is no longer declared but still holds 1000 MB \(pid {os.getpid()}"):
        ensure_gpus(tmp_path, [{"name": H100, "total_mb": 81559, "uuid": uuids[0], "release_lag_s": 0.2}])
    assert len(ledgers(tmp_path)) == 2
    Ledger(str(tmp_path / "gpu1.json")).free(os.getpid(), lag_s=0)
    changed = ensure_gpus(tmp_path, [{"name": H100, "total_mb": 81559, "uuid": uuids[0], "release_lag_s": 0.2}])
    assert changed == ["simulated GPU 1 removed (no longer declared)"] and len(ledgers(tmp_path)) == 1


def test_a_stand_in_given_gpu1_by_uuid_charges_gpu1_only(tmp_path):
    uuids = _two_gpus(tmp_path)
    p1, p2 = free_ports(2)
    s = StandIn(tmp_path, p1, "--flavor", "vllm", "--vram-mb", "3000", "--load-s", "0", env={"CUDA_VISIBLE_DEVICES": uuids[1]})
    f = StandIn(tmp_path, p2, "--flavor", "fastapi", "--vram-mb", "1000", "--load-s", "0",
                env={"CUDA_VISIBLE_DEVICES": uuids[1][:12]})  # a unique prefix of the UUID, as CUDA takes
    try:
        s.wait_listening(), f.wait_listening()
        assert _used(tmp_path) == [0, 4000]
        assert sorted(_apps(tmp_path)) == sorted([(uuids[1], s.proc.pid, 3000), (uuids[1], f.proc.pid, 1000)])
    finally:
        s.close(), f.close()


@pytest.mark.parametrize("cvd", ["2", "GPU-00000000-dead-beef-0000-000000000000", "0,0", ""])
def test_an_unknown_gpu_in_cuda_visible_devices_is_refused(tmp_path, cvd):
    _two_gpus(tmp_path)
    env = {**os.environ, "GPUMOD_SIM_DIR": str(tmp_path), "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": cvd}
    r = subprocess.run([sys.executable, "-m", "gpumod_tasks.sim.server", "--flavor", "vllm", "--port", str(free_ports(1)[0]),
                        "--vram-mb", "100", "--load-s", "0"], env=env, capture_output=True, text=True, timeout=20)
    assert r.returncode == 1
    assert "CUDA_VISIBLE_DEVICES" in r.stderr and ("GPUs: 0 GPU-" in r.stderr or "empty" in r.stderr)
    assert _used(tmp_path) == [0, 0]


def test_tensor_parallel_vllm_one_worker_pid_per_gpu_sleep_and_wake_per_gpu(tmp_path):
    uuids = _two_gpus(tmp_path)
    port = free_ports(1)[0]
    s = StandIn(tmp_path, port, "--flavor", "vllm", "--served-model-name", "m", "--vram-mb", "40001", "--sleep-vram-mb", "4916",
                "--tensor-parallel-size", "2", "--enable-sleep-mode", "--load-s", "0.2", "--release-lag-s", "0.2",
                env={"VLLM_SERVER_DEV_MODE": "1", "CUDA_VISIBLE_DEVICES": ",".join(uuids), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    try:
        s.wait_listening()
        apps = _apps(tmp_path)
        assert [(u, m) for u, _, m in apps] == [(uuids[0], 20001), (uuids[1], 20000)]  # remainder on rank 0
        pids = [p for _, p, _ in apps]
        assert len(set(pids)) == 2 and s.proc.pid not in pids  # the server holds nothing itself
        assert [_ppid(p) for p in pids] == [s.proc.pid] * 2  # each worker is the server's child
        assert s.c.post(s.url + "/sleep", params={"level": "1"}).json() == {"status": "sleeping", "level": 1}
        assert wait_for(lambda: _used(tmp_path) == [2458, 2458], 3)  # the residual, half on each GPU
        assert s.c.post(s.url + "/wake_up").json()["status"] == "awake"
        assert _used(tmp_path) == [20001, 20000]
        r = s.c.post(s.url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
    finally:
        s.close()
    assert wait_for(lambda: _used(tmp_path) == [0, 0], 3)
    assert not any(os.path.exists(f"/proc/{p}") and Path(f"/proc/{p}/stat").read_text().split()[2] != "Z" for p in pids)


def test_a_dead_tp_worker_releases_its_gpu_and_the_engine_dies_as_vllm_does(tmp_path):
    uuids = _two_gpus(tmp_path)
    port = free_ports(1)[0]
    s = StandIn(tmp_path, port, "--flavor", "vllm", "--served-model-name", "m", "--vram-mb", "30000",
                "--tensor-parallel-size", "2", "--load-s", "0", "--release-lag-s", "0.2",
                env={"CUDA_VISIBLE_DEVICES": "0,1"})
    try:
        s.wait_listening()
        assert s.c.get(s.url + "/health").status_code == 200
        by_gpu = {u: p for u, p, _ in _apps(tmp_path)}
        t0 = time.time()
        os.kill(by_gpu[uuids[1]], signal.SIGKILL)
        # vLLM's worker monitor: the engine is dead (/health 503, requests 500), the executor is
        # shut down (the other worker exits too) and the API server goes a few seconds later
        assert wait_for(lambda: s.c.get(s.url + "/health").status_code == 503, 3)
        r = s.c.post(s.url + "/v1/completions", json={"model": "m", "prompt": "x"})
        assert r.status_code == 500 and "EngineCore encountered an issue" in r.json()["error"]["message"]
        assert wait_for(lambda: _used(tmp_path) == [0, 0], 3)
        assert s.proc.wait(10) == 1 and time.time() - t0 >= 4.5
    finally:
        if s.proc.poll() is None:
            s.close()
    assert "Worker proc VllmWorker-1 died unexpectedly, shutting down executor." in s.proc.stderr.read()


def test_keep_alive_on_engine_death_keeps_answering_503(tmp_path):
    _two_gpus(tmp_path)
    port = free_ports(1)[0]
    s = StandIn(tmp_path, port, "--flavor", "vllm", "--vram-mb", "2000", "--tensor-parallel-size", "2", "--load-s", "0",
                "--release-lag-s", "0.1", env={"CUDA_VISIBLE_DEVICES": "1,0", "VLLM_KEEP_ALIVE_ON_ENGINE_DEATH": "1"})
    try:
        s.wait_listening()
        assert _used(tmp_path) == [1000, 1000]
        rank0 = next(p for u, p, _ in _apps(tmp_path) if u == sim_uuid("homegpt", 1))  # CUDA order: rank 0 is GPU 1
        os.kill(rank0, signal.SIGKILL)
        assert wait_for(lambda: s.c.get(s.url + "/health").status_code == 503, 3)
        time.sleep(5.5)
        assert s.proc.poll() is None and s.c.get(s.url + "/health").status_code == 503
    finally:
        s.close()


def test_tp_larger_than_the_visible_gpus_is_refused(tmp_path):
    _two_gpus(tmp_path)
    env = {**os.environ, "GPUMOD_SIM_DIR": str(tmp_path), "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "1"}
    r = subprocess.run([sys.executable, "-m", "gpumod_tasks.sim.server", "--flavor", "vllm", "--port", str(free_ports(1)[0]),
                        "--vram-mb", "100", "--tensor-parallel-size", "2", "--load-s", "0"],
                       env=env, capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "Tensor parallel size (2)" in r.stderr


def test_llamacpp_tensor_split_charges_one_pid_on_both_gpus(tmp_path):
    uuids = _two_gpus(tmp_path)
    p1, p2 = free_ports(2)
    single = StandIn(tmp_path, p1, "--flavor", "llamacpp", "--model", "m.gguf", "--alias", "m", "--vram-mb", "8000",
                     "--tensor-split", "3,1", "--load-s", "0", "--release-lag-s", "0.1", env={"CUDA_VISIBLE_DEVICES": ",".join(uuids)})
    router = StandIn(tmp_path, p2, "--flavor", "llamacpp", "--models-max", "1", "--sim-model", "a=1000", "--tensor-split", "1,1",
                     "--load-s", "0", "--release-lag-s", "0.1", env={"CUDA_VISIBLE_DEVICES": "0,1"})
    try:
        single.wait_listening(), router.wait_listening()
        assert wait_for(lambda: single.c.get(single.url + "/health").status_code == 200, 5)
        assert sorted(_apps(tmp_path)) == sorted([(uuids[0], single.proc.pid, 6000), (uuids[1], single.proc.pid, 2000)])
        router.c.post(router.url + "/models/load", json={"model": "a"})
        assert wait_for(lambda: _used(tmp_path) == [6500, 2500], 5)
        router.c.post(router.url + "/models/unload", json={"model": "a"})
        assert wait_for(lambda: _used(tmp_path) == [6000, 2000], 5)
    finally:
        single.close(), router.close()
    assert wait_for(lambda: _used(tmp_path) == [0, 0], 3)


def test_the_meter_charges_a_real_command_by_its_own_tensor_split(tmp_path):
    """The meter that wraps a real llama-server: here around a tiny HTTP server that answers
    /health, so the charging (by the wrapped command's --tensor-split) is what is tested."""
    uuids = _two_gpus(tmp_path)
    port = free_ports(1)[0]
    server = (f"import http.server, sys\nclass H(http.server.BaseHTTPRequestHandler):\n"
              f" def do_GET(self):\n  self.send_response(200); self.end_headers()\n def log_message(self, *a): pass\n"
              f"http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": f"{uuids[1]},{uuids[0]}"}
    m = subprocess.Popen([sys.executable, "-m", "gpumod_tasks.sim.meter", "--sim-dir", str(tmp_path), "--port", str(port),
                          "--vram-mb", "4000", "--release-lag-s", "0.1", "--", sys.executable, "-c", server, "--tensor-split", "1,3"],
                         env=env, stderr=subprocess.PIPE, text=True)
    try:
        # CUDA order: the split's first share goes to the first visible GPU, GPU 1
        assert wait_for(lambda: _used(tmp_path) == [3000, 1000], 10), _used(tmp_path)
        assert {(u, p) for u, p, _ in _apps(tmp_path)} == {(uuids[0], m.pid), (uuids[1], m.pid)}
    finally:
        m.terminate()
        m.wait(10)
    assert wait_for(lambda: _used(tmp_path) == [0, 0], 3)
    bad = subprocess.run([sys.executable, "-m", "gpumod_tasks.sim.meter", "--sim-dir", str(tmp_path), "--port", str(port),
                          "--", "true"], env={**env, "CUDA_VISIBLE_DEVICES": "5"}, capture_output=True, text=True, timeout=20)
    assert bad.returncode == 1 and "'5' names no simulated GPU" in bad.stderr


def test_single_gpu_sims_are_unchanged(tmp_path):
    """One ledger and CUDA_VISIBLE_DEVICES=0, as every single-GPU unit renders it: one pid, one GPU."""
    Ledger.create(tmp_path / "gpu0.json", name="NVIDIA GeForce RTX 4090", total_mb=24564, release_lag_s=0.1)
    port = free_ports(1)[0]
    s = StandIn(tmp_path, port, "--flavor", "vllm", "--vram-mb", "5000", "--sleep-vram-mb", "512", "--load-s", "0",
                env={"CUDA_VISIBLE_DEVICES": "0"})
    try:
        s.wait_listening()
        assert [(p, m) for _, p, m in _apps(tmp_path)] == [(s.proc.pid, 5000)]
        with httpx.Client(trust_env=False) as c:
            assert c.get(s.url + "/health").status_code == 200
    finally:
        s.close()


def test_a_tp_stand_in_not_told_its_residual_keeps_vllms_published_per_gpu_figure(tmp_path):
    _two_gpus(tmp_path)
    port = free_ports(1)[0]
    s = StandIn(tmp_path, port, "--flavor", "vllm", "--vram-mb", "20000", "--tensor-parallel-size", "2", "--enable-sleep-mode",
                "--load-s", "0", "--release-lag-s", "0.1", env={"VLLM_SERVER_DEV_MODE": "1", "CUDA_VISIBLE_DEVICES": "0,1"})
    try:
        s.wait_listening()
        s.c.post(s.url + "/sleep", params={"level": "2"})
        assert wait_for(lambda: _used(tmp_path) == [2458, 2458], 3), _used(tmp_path)
        s.c.post(s.url + "/wake_up")
        assert _used(tmp_path) == [10000, 10000]
    finally:
        s.close()


def test_tp_workers_do_not_outlive_a_killed_server(tmp_path):
    _two_gpus(tmp_path)
    port = free_ports(1)[0]
    s = StandIn(tmp_path, port, "--flavor", "vllm", "--vram-mb", "8000", "--tensor-parallel-size", "2", "--load-s", "0",
                "--release-lag-s", "0.1", env={"CUDA_VISIBLE_DEVICES": "0,1"})
    s.wait_listening()
    workers = [p for _, p, _ in _apps(tmp_path)]
    s.proc.kill()
    s.proc.wait(5)
    assert wait_for(lambda: _used(tmp_path) == [0, 0], 3)

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    assert wait_for(lambda: all(gone(p) for p in workers), 3)
    s.c.close()


@pytest.mark.skipif(not shutil.which("python3"), reason="no system python3")
def test_tp_workers_start_from_the_shipped_package_on_a_bare_python(tmp_path):
    """On a remote box the simulator is ``gpumod_sim`` under the sim dir's lib/, run by a bare
    python3: the workers must find their package there too."""
    from gpumod_tasks.simhost import REMOTE_PACKAGE, sim_package_files

    lib = tmp_path / "lib"
    for rel, text in sim_package_files().items():
        (lib / REMOTE_PACKAGE / rel).parent.mkdir(parents=True, exist_ok=True)
        (lib / REMOTE_PACKAGE / rel).write_text(text)
    sim_dir = tmp_path / "sim"
    uuids = _two_gpus(sim_dir)
    port = free_ports(1)[0]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(lib), "CUDA_VISIBLE_DEVICES": ",".join(uuids)}
    p = subprocess.Popen(["python3", "-S", "-m", f"{REMOTE_PACKAGE}.server", "--flavor", "vllm", "--port", str(port),
                          "--sim-dir", str(sim_dir), "--vram-mb", "1000", "-tp", "2", "--load-s", "0", "--release-lag-s", "0.1"],
                         env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(_apps(sim_dir)) == 2, 10), p.stderr.read() if p.poll() is not None else ""
        assert [(u, m) for u, _, m in _apps(sim_dir)] == [(uuids[0], 500), (uuids[1], 500)]
    finally:
        p.terminate()
        p.wait(5)
    assert wait_for(lambda: _used(sim_dir) == [0, 0], 3)


def test_a_custom_server_given_two_gpus_is_one_pid_on_both(tmp_path):
    uuids = _two_gpus(tmp_path)
    port = free_ports(1)[0]
    s = StandIn(tmp_path, port, "--flavor", "fastapi", "--vram-mb", "3001", "--sleep-vram-mb", "200", "--enable-sleep-mode",
                "--load-s", "0", "--release-lag-s", "0.1", env={"CUDA_VISIBLE_DEVICES": "0,1"})
    try:
        s.wait_listening()
        assert _apps(tmp_path) == [(uuids[0], s.proc.pid, 1501), (uuids[1], s.proc.pid, 1500)]
        s.c.post(s.url + "/sleep", params={"level": "1"})
        assert wait_for(lambda: _used(tmp_path) == [100, 100], 3), _used(tmp_path)
    finally:
        s.close()
