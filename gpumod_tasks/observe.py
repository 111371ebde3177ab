"""Observe a target: every fact read concurrently, one round trip per kind of fact (remote: all
command facts in one).

Unit states (one ``systemctl show``), the GPU (one nvidia-smi/NVML read), host memory, the recorded
mode, the installed unit files asked for (digest and mtime, with the host's clock), and every
service's HTTP health and sleep state (concurrently).  The result is a plain ``Observed`` value
(``observed.py``) the planner consumes; nothing here decides anything.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from .daemon.announce import parse as parse_daemon_link
from .daemon.announce import registration_file
from .engines import Probe, probe
from .errors import GpumodError
from .facts.batch import run_batch
from .facts.gpu import GpuFacts
from .facts.meminfo import parse_meminfo
from .facts.unitfiles import parse_unit_files, unit_files_argv
from .facts.units import parse_systemctl_show
from .footprints import footprints_file
from .footprints import parse as parse_footprints
from .observed import Observed, Releasing, ServiceObs, SvcState, classify, describe_state
from .state import mode_file, parse_mode_record
from .target import Target

__all__ = ["Observed", "ServiceObs", "SvcState", "classify", "describe_state", "observe"]


def unit_file_location(target: Target) -> tuple[str, str]:
    """(directory, suffix) where the target's unit files (or supervisor runner scripts) live."""
    from .service_manager import Supervisor

    m = target.manager
    if isinstance(m, Supervisor):
        return f"{m.root}/units", ".sh"
    return target.host.expand(target.spec.resolved_unit_dir(target.host.home)), ""


def observe(target: Target, services: list[str] | None = None, *, with_gpu: bool = True,
            unit_files: Sequence[str] = ()) -> Observed:
    """``unit_files``: units whose installed file (digest, mtime) the planner needs."""
    t0 = time.perf_counter()
    cat = target.catalog
    ids = services if services is not None else list(cat.presets)
    presets = [cat.presets[i] for i in ids]
    units = [p.unit for p in presets]
    host = target.host
    manager = target.manager  # resolve before threads (may run a command)
    sim = target.sim
    meminfo_path = f"{target.spec.procfs.rstrip('/')}/meminfo"
    gpu: GpuFacts | None = None
    gpu_error = ""
    with _shared_pool() as pool:
        # this machine: a port nobody listens on is answered by a connect in ``probe`` (no HTTP),
        # and an accepted connection is kept for the request that follows
        f_probes = _probe_all(pool, host, presets)
        if host.is_this_machine:
            # commands side by side; what is a plain file read here is read at once
            f_units = pool.submit(manager.states, units)
            f_gpu = pool.submit(target.gpu) if with_gpu else None
            f_mem = _now(host.read_file, meminfo_path)
            f_rec = _now(host.read_file, mode_file(target.state_dir))
            f_daemon = _now(host.read_file, registration_file(target.state_dir))
            f_fp = _now(host.read_file, footprints_file(target.state_dir))
            f_files = _now(_unit_files_here, *unit_file_location(target), list(unit_files)) if unit_files else None
            unit_states = f_units.result()
            if f_gpu is not None:
                try:
                    gpu = f_gpu.result()
                except GpumodError as exc:
                    gpu_error = str(exc)
            mem_text = f_mem.result()
            rec_text = f_rec.result()
            daemon_text = f_daemon.result()
            fp_text = f_fp.result()
            files_text = f_files.result() if f_files is not None else ""
        else:
            # a remote box: every fact in one round trip, each parsed as usual
            facts: dict[str, list[str]] = {"units": manager.state_argv(units), "meminfo": ["cat", "--", meminfo_path],
                                           "mode": ["cat", "--", mode_file(target.state_dir)],
                                           "daemon": ["cat", "--", registration_file(target.state_dir)],
                                           "footprints": ["cat", "--", footprints_file(target.state_dir)]}
            if with_gpu:
                facts["gpu"] = target.gpu_fact_argv()
            if unit_files:
                facts["unit_files"] = unit_files_argv(*unit_file_location(target), list(unit_files))
            out = run_batch(host, facts)
            files_text = out["unit_files"].stdout if unit_files else ""
            unit_states = parse_systemctl_show(out["units"].stdout, units)
            if with_gpu:
                try:
                    gpu = target.parse_gpu_fact(out["gpu"].exit_code, out["gpu"].stdout)
                except GpumodError as exc:
                    gpu_error = str(exc)
            mem_text = out["meminfo"].stdout if out["meminfo"].exit_code == 0 else None
            rec_text = out["mode"].stdout if out["mode"].exit_code == 0 else None
            daemon_text = out["daemon"].stdout if out["daemon"].exit_code == 0 else None
            fp_text = out["footprints"].stdout if out["footprints"].exit_code == 0 else None
        record = parse_mode_record(rec_text, mode_file(target.state_dir))
        probes = {k: f.result() for k, f in f_probes.items()}
    mem = parse_meminfo(mem_text) if mem_text else None
    pid_owner: dict[int, str] = {}
    for p in presets:
        pid = unit_states[p.unit].main_pid
        if not pid:
            continue
        # a shared router's VRAM belongs to the model it reports loaded
        pr = probes.get(p.id)
        if pid not in pid_owner or (pr is not None and pr.router_status in ("loaded", "loading")):
            pid_owner[pid] = p.id
    vram: dict[str, dict[int, int]] = {}
    unmapped: dict[int, int] = {}
    foreign_gpu: dict[int, int] = {}
    releasing: list[Releasing] = []
    if gpu and gpu.gpus:
        # GPU processes that are not a unit's main pid (vLLM's engine core and tensor-parallel
        # workers, router children): one round trip for all of them
        strays = sorted({pid for g in gpu.gpus for pid in g.per_pid if pid not in pid_owner})
        by_cgroup, pstate = _walk(target, strays, pid_owner) if strays else ({}, {})
        running = {p.id for p in presets if unit_states[p.unit].is_running}
        last_run = {unit_states[p.unit].last_pid: p.id for p in presets
                    if unit_states[p.unit].last_pid and not unit_states[p.unit].is_running}
        vram, unmapped, foreign_gpu, releasing = attribute(gpu, pid_owner, by_cgroup, pstate, running, last_run)
    obs: dict[str, ServiceObs] = {}
    for p in presets:
        u = unit_states[p.unit]
        st, level, foreign = classify(p, u, probes.get(p.id), record)
        obs[p.id] = ServiceObs(id=p.id, state=st, unit=u, probe=probes.get(p.id), sleep_level=level,
                               vram_mb=sum(vram.get(p.id, {}).values()), foreign_listener=foreign,
                               gpu_mb=vram.get(p.id, {}))
    files, boot = parse_unit_files(files_text, list(unit_files)) if unit_files else ({}, 0.0)
    return Observed(host=target.spec.name, services=obs, gpu=gpu, mem=mem, record=record, manager=manager.kind,
                    sim=sim, gpu_error=gpu_error, took_s=time.perf_counter() - t0, unmapped_pids=unmapped,
                    unit_files=files, boot_time=boot, releasing=tuple(releasing), daemon=parse_daemon_link(daemon_text),
                    footprints=parse_footprints(fp_text), foreign_gpu_mb=foreign_gpu)


def attribute(gpu: GpuFacts, pid_owner: dict[int, str], by_cgroup: dict[int, str], pstate: dict[int, str],
              running: set[str], last_run: dict[int, str]
              ) -> tuple[dict[str, dict[int, int]], dict[int, int], dict[int, int], list[Releasing]]:
    """Pure: every (process, GPU) pair of the GPU fact to its owner, per GPU index: services
    (service -> GPU -> MB; a process on several GPUs counts on each, tensor-parallel workers are
    their own pids found by the cgroup walk), processes gpumod does not run (pid -> MB, and GPU ->
    MB), and processes on their way out (with their MB per GPU)."""
    vram: dict[str, dict[int, int]] = {}
    unmapped: dict[int, int] = {}
    foreign_gpu: dict[int, int] = {}
    gone: dict[int, Releasing] = {}
    for g in gpu.gpus:
        for pid, raw in g.per_pid.items():
            mb = raw or 0
            owner = pid_owner.get(pid)
            why = None if owner else releasing_owner(pid, by_cgroup.get(pid), pstate.get(pid, ""), running, last_run)
            if why is not None:
                r = gone.get(pid) or Releasing(pid, 0, why)
                gone[pid] = Releasing(pid, r.mb + mb, why, {**r.gpu_mb, g.index: r.gpu_mb.get(g.index, 0) + mb})
                continue
            owner = owner or by_cgroup.get(pid)
            if owner:
                per = vram.setdefault(owner, {})
                per[g.index] = per.get(g.index, 0) + mb
            else:
                unmapped[pid] = unmapped.get(pid, 0) + mb
                foreign_gpu[g.index] = foreign_gpu.get(g.index, 0) + mb
    return vram, unmapped, foreign_gpu, list(gone.values())


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


@contextmanager
def _shared_pool() -> Iterator[ThreadPoolExecutor]:
    """One pool for every observation of this process: a thread is started once, not per
    observation (starting ~30 per observation cost more than the probes on a busy machine)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="gpumod-observe")
        pool = _POOL
    yield pool


def _probe_all(pool: ThreadPoolExecutor, host: Any, presets: list[Any]) -> dict[str, Future[Probe]]:
    """Every service's probe, side by side.  A remote box's answers wait on the network: one thread
    each.  This machine's wait on the servers' CPU, which the probes share with them: more threads
    than cores only add switching (24 stand-ins probed from 4 threads here took ~20 % less than
    from 24), so ``max(4, cores)`` lanes take the probes from one queue, each lane the next probe
    when its last one is answered (a server that accepts and never answers holds one lane until
    its timeout; the other lanes go on with the rest)."""
    if not host.is_this_machine:
        return {p.id: pool.submit(probe, host, p) for p in presets}
    lanes = max(4, os.cpu_count() or 1)
    out: dict[str, Future[Probe]] = {p.id: Future() for p in presets}
    queue = deque(presets)

    def lane() -> None:
        while True:
            try:
                p = queue.popleft()
            except IndexError:
                return
            try:
                out[p.id].set_result(probe(host, p))
            except BaseException as exc:  # noqa: BLE001 - raised by that probe's result()
                out[p.id].set_exception(exc)

    for _ in range(min(lanes, len(presets))):
        pool.submit(lane)
    return out


def _now(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """``fn(*args)`` run at once, as a done future (its exception raised by ``result()``)."""
    f: Future[Any] = Future()
    try:
        f.set_result(fn(*args))
    except Exception as exc:  # noqa: BLE001 - raised by result(), as from a pool
        f.set_exception(exc)
    return f


def _unit_files_here(directory: str, suffix: str, units: list[str]) -> str:
    from .facts.here import unit_files_text  # what the unit-files script prints, read in this process

    return unit_files_text(directory, suffix, units)


def _run_fact(host: object, argv: list[str]) -> str:
    r = host.run(argv, ok=(0, 1))  # type: ignore[attr-defined]
    return str(r.stdout)


def releasing_owner(pid: int, cgroup_owner: str | None, state: str, running: set[str],
                    last_run: dict[int, str]) -> str | None:
    """Pure: is this GPU process (no running unit's main pid) on its way out? Its service's name
    ("" when unknown), or None when it is not (a live process: a service's child or a foreign
    one). Exiting: the process is gone or a zombie (``state`` from /proc/PID/stat: Z, X, or
    "gone"), or it sits in the cgroup of a gpumod unit that is not running."""
    owner = cgroup_owner or last_run.get(pid, "")
    if state in ("gone", "Z", "X"):
        return owner
    if cgroup_owner and cgroup_owner not in running:
        return cgroup_owner
    return None


def _owners_by_cgroup(target: Target, pids: list[int], pid_owner: dict[int, str]) -> dict[int, str]:
    return _walk(target, pids, pid_owner)[0]


def _walk(target: Target, pids: list[int], pid_owner: dict[int, str]) -> tuple[dict[int, str], dict[int, str]]:
    """Map GPU processes that are not a unit's main process to their service: a process's systemd
    cgroup names the unit; else walk up its parents (at most 8) to a unit's MainPID. Also each
    one's process state (R, S, Z, ..., or "gone"). One command."""
    script = (
        'for p0 in "$@"; do echo "$p0 state $(sed -e \'s/.*) //\' /proc/$p0/stat 2>/dev/null | cut -d\' \' -f1)"; '
        'p=$p0; i=0; while [ "$p" -gt 1 ] 2>/dev/null && [ $i -lt 8 ]; do '
        'echo "$p0 $p $(grep -o "gpumod-[a-z0-9._-]*\\.service" /proc/$p/cgroup 2>/dev/null | head -1)"; '
        "p=$(sed -e 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f2); i=$((i+1)); done; done"
    )
    try:
        r = target.host.run(["sh", "-c", script, "sh", *map(str, pids)], ok=(0, 1))
    except GpumodError:
        return {}, {}
    return (parse_cgroup_walk(r.stdout, pid_owner, {p.unit: p.id for p in target.catalog.presets.values()}),
            parse_pid_states(r.stdout))


def parse_pid_states(text: str) -> dict[int, str]:
    """Pure: lines ``PID state [S]`` -> {PID: S}, "gone" when the process had no /proc entry."""
    out: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] == "state" and parts[0].isdigit():
            out[int(parts[0])] = parts[2] if len(parts) > 2 else "gone"
    return out


def parse_cgroup_walk(text: str, pid_owner: dict[int, str], unit_owner: dict[str, str]) -> dict[int, str]:
    """Pure: lines ``PID ANCESTOR [UNIT]`` -> {PID: service}; the first hit per PID wins."""
    out: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[0].isdigit() or int(parts[0]) in out:
            continue
        pid = int(parts[0])
        if len(parts) >= 3 and parts[2] in unit_owner:
            out[pid] = unit_owner[parts[2]]
        elif parts[1].isdigit() and int(parts[1]) in pid_owner:
            out[pid] = pid_owner[int(parts[1])]
    return out
