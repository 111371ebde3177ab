"""The release wait as one command on a remote box (``GpuReader.wait_used_at_most``), run here by a
real shell against a stand-in nvidia-smi whose figure falls as it is asked: every poll is
reported, the limit, the timeout, a failing backend and an unreadable answer each end it as the
executor's own polling would."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gpumod_tasks.errors import GpuProbeError
from gpumod_tasks.facts.gpu_read import GpuReader
from gpumod_tasks.host.local import LocalHost
from gpumod_tasks.inventory import HostSpec


def smi(tmp_path: Path, body: str) -> str:
    """A stand-in nvidia-smi: ``body`` runs with $n the number of times it has been asked."""
    p = tmp_path / "nvidia-smi"
    count = tmp_path / "count"
    count.write_text("0\n")
    p.write_text(f"#!/bin/sh\nread -r n < {count}; n=$((n + 1)); echo $n > {count}\n"
                 f'[ "$1" = --query-gpu=memory.used ] || exit 2\n{body}\n')
    p.chmod(0o755)
    return str(p)


def reader(tmp_path: Path, body: str) -> GpuReader:
    return GpuReader(LocalHost(HostSpec(name="box")), "box", shim=smi(tmp_path, body))


def test_polls_until_at_or_under_the_limit_and_reports_every_figure(tmp_path):
    r = reader(tmp_path, 'echo "$((5000 - n * 1000)), 0"')  # 4000, 3000, 2000, ...; the second GPU's 0 ignored
    polls: list[int] = []
    assert r.wait_used_at_most(2500, 10, polls) is True
    assert polls == [4000, 3000, 2000]
    polls = []
    assert reader(tmp_path, "echo 100").wait_used_at_most(2500, 10, polls) is True and polls == [100]  # at once


def test_times_out_with_the_last_figure_and_polls_at_the_executors_interval(tmp_path):
    polls: list[int] = []
    t0 = time.monotonic()
    assert reader(tmp_path, "echo 9000").wait_used_at_most(2500, 0.5, polls) is False
    took = time.monotonic() - t0
    assert polls and set(polls) == {9000}
    assert 0.45 <= took < 5, took
    # 2 ms at first, 3% of the time waited later: many polls in half a second, not one per second
    assert len(polls) >= 10, len(polls)


def test_a_failing_or_unreadable_backend_raises_with_its_words(tmp_path):
    with pytest.raises(GpuProbeError, match=r"nvidia-smi failed: .*: no GPU here"):
        reader(tmp_path, "echo 'no GPU here' >&2; exit 9").wait_used_at_most(2500, 5, [])
    with pytest.raises(GpuProbeError, match="memory.used unreadable: 'N/A"):
        reader(tmp_path, "echo N/A").wait_used_at_most(2500, 5, [])
