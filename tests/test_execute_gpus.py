"""The release wait on a box with several GPUs, against the simulated GPUs' ledgers: it reads every
GPU each poll and is met only when each GPU involved is down to its figure."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from gpumod_tasks.catalog import load_catalog
from gpumod_tasks.execute import Executor, StepFailed
from gpumod_tasks.host.local import LocalHost
from gpumod_tasks.inventory import HostSpec
from gpumod_tasks.plan import Policy, WaitRelease
from gpumod_tasks.sim.ledger import Ledger
from gpumod_tasks.target import Target

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def two_gpus(tmp_path):
    root, state = tmp_path / "home", tmp_path / "state"
    (root / "presets").mkdir(parents=True)
    (root / "modes").mkdir()
    shutil.copytree(REPO / "templates", root / "templates")
    hs = HostSpec(name="box", sim=True, gpu_total_mb=24564, service_manager="supervisor", state_dir=str(state))
    t = Target(hs, LocalHost(hs), load_catalog(root), str(root))
    leds = [Ledger.create(state / "sim" / f"gpu{i}.json", name="RTX 4090", total_mb=24564, index=i, release_lag_s=0)
            for i in range(2)]
    return t, leds


def test_met_only_when_every_gpu_involved_reaches_its_figure(two_gpus):
    t, (g0, g1) = two_gpus
    me = os.getpid()
    g0.alloc(me, 500, "kept")  # GPU0 may keep 500 MB
    g1.alloc(me, 9000, "leaving")
    threading.Timer(0.3, lambda: g1.free(me, "leaving", lag_s=0)).start()
    t0 = time.perf_counter()
    status, detail = Executor(t, Policy(), release_timeout_s=5)._wait_release(WaitRelease(500, 256, (), ((0, 500), (1, 0))))
    assert status == "unchanged" and time.perf_counter() - t0 >= 0.3
    assert detail.startswith("GPU0 500 MB, GPU1 0 MB used after ")


def test_a_gpu_still_held_fails_the_wait_naming_it(two_gpus):
    t, (_, g1) = two_gpus
    g1.alloc(os.getpid(), 700, "stuck")
    with pytest.raises(StepFailed, match=r"VRAM not released: GPU1 uses 700 MB > expected 0 MB \+ 256 MB after 0.3s"):
        Executor(t, Policy(), release_timeout_s=0.3)._wait_release(WaitRelease(0, 256, (), ((0, 0), (1, 0))))
