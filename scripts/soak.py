#!/usr/bin/env python3
"""A bounded chaos run of the router daemon on the simulated GPU host.

    .venv/bin/python scripts/soak.py [--seconds 60] [--clients 8] [--seed 1] [--json FILE] [--keep]

It builds a throwaway catalog on free loopback ports with its own state dir (four services over
three modes that cannot all be awake at once), starts the stand-ins through gpumod (`inv
mode.switch`) and `inv router.serve` as a child process, and then, for ``--seconds``:

- ``--clients`` concurrent clients (aiohttp) send chat, completion and embedding requests for
  every model, streamed and not; some streams are cut off by the client after the first chunk;
  some requests are malformed (each kind once at the start, then 12 % of the clients'
  requests: bad JSON, no model, an unknown model, a body over the daemon's limit, a wrong
  content type, JSON nested too deeply, a foreign Host, a text/plain /switch, an unknown mode)
  and must get their 4xx;
- a chaos task forces switches (``POST /switch`` by mode or by model), SIGKILLs a service now
  and then (its pid from the supervisor's pid files, the ones ``inv status`` reads, and only a
  process whose command line is one of this run's stand-ins) and SIGKILLs the daemon once, at
  40 % of the run, then starts it again: the new daemon must adopt what runs (it reports the
  mode on record when the old one died, possibly mid-switch, and no service got a new pid but
  those killed in the 5 s before);
- a monitor reads the ledger files of the simulated GPU every 0.2 s and checks its invariants.

Afterwards: no request still in flight or waiting in the daemon, ``inv mode.switch --name a``
then ``inv mode.verify --name a`` pass, a second switch changes nothing, the ledger holds exactly
what each service declares for its state, and the daemon reports mode ``a``. Everything it
started is stopped (the daemon by pid, the services with ``inv sim.reset`` on the same state
dir) and the temporary directory removed.

What every request became (each counts once; ``sent`` is their sum):
- answered 200 (a stream only when it ended with ``[DONE]`` and no ``abort``), or 4xx / 5xx,
  grouped by status and the daemon's reason (numbers in it shown as N);
- cut by us: a stream the client itself closed after its first chunk;
- dropped by our daemon kill: no answer, and the request was in flight while the daemon was
  down (between its SIGKILL and the restarted daemon's first answer);
- cut by our service kill: a 200 stream that broke off while its model's service was killed;
- lost: everything else with no complete answer (a connection error, a reset, a timeout, a
  stream that stopped early or was aborted). Any lost request fails the run.
A malformed request answered with anything but its expected status, or a 200 naming another
model than the one asked for, also fails the run ("wrong answers").

Ledger invariants, on every sample (tolerances: the release lag of the ledger, and for a dead
process the ledger's own rule that its lag starts when a reader first sees it dead; the daemon
reads every ``--reconcile-s``, so a dead process may stay charged that long plus the lag):
- never over a GPU's total: the charged megabytes (entries not yet past their ``release_at``)
  never exceed ``total_mb``;
- used equals the services' sum: every charged entry is either held by the live pid of a
  service (a pid file in ``supervisor/run``) or in release: freed (``release_at`` set, at most
  the lag ahead) or its process dead (for at most reconcile + lag + 1 s after the monitor first
  saw it dead). An entry held by a live process that is no service's for over 2 s (a stop's
  own window: the pid file goes before the process) breaks it;
- no service holds more than its preset's ``vram_mb`` (a double load would).
At the end, with nothing moving, the check is exact: each service holds its ``vram_mb`` if
running, its sleep residual if asleep, nothing if stopped, and nothing else is charged.

The daemon's RSS (``VmRSS``) is sampled every second and compared within each process: the first
sample after its first answered request against its last; after the restart the new daemon is
compared with its own start (it has a fresh heap), and the two starts with each other.

Exit status 0 only when nothing was lost, no answer was wrong, every invariant held, the
restarted daemon adopted what ran, and the run converged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import free_ports

REPO = Path(__file__).resolve().parent.parent
MAX_SECONDS, MAX_CLIENTS, MAX_REQUESTS = 600, 64, 200_000
MAX_BODY_MB = 1  # the daemon's --max-body-mb: the "huge body" request is twice that
RECONCILE_S = 1.0
LAG_S = 0.25
WORDS = "one two three four five six seven eight nine ten"

# id: (driver, vram_mb, sleep_mode, sleep residual, routes)
SERVICES = {
    "emb": ("vllm", 2500, "l1", 512, ("embeddings", "chat")),
    "chat": ("vllm", 9000, "l1", 512, ("chat", "completions")),
    "code": ("llamacpp", 8000, "router", 0, ("chat", "completions")),
    "big": ("vllm", 14000, "l2", 512, ("chat",)),
}
MODES = {"a": ["emb", "chat"], "b": ["emb", "code"], "c": ["emb", "big"], "blank": []}
FINAL_MODE = "a"

# name: (method, path, body, content type, extra headers, expected status)
MALFORMED: dict[str, tuple[str, str, bytes, str, dict[str, str], int]] = {
    "bad JSON": ("POST", "/v1/chat/completions", b'{"model": "chat", "messages": [', "application/json", {}, 400),
    "no model": ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]}',
                 "application/json", {}, 400),
    "unknown model": ("POST", "/v1/chat/completions", b'{"model": "nosuch-' + b"x" * 300 + b'", "messages": []}',
                      "application/json", {}, 404),
    "huge body": ("POST", "/v1/chat/completions",
                  b'{"model": "chat", "messages": [{"role": "user", "content": "' + b"x" * (2 * MAX_BODY_MB << 20) + b'"}]}',
                  "application/json", {}, 413),
    "wrong content type": ("POST", "/v1/chat/completions", b'{"model": "chat", "messages": []}', "text/plain", {}, 415),
    "nested too deeply": ("POST", "/v1/chat/completions", b"[" * 100_000, "application/json", {}, 400),
    "foreign Host": ("GET", "/models", b"", "", {"Host": "evil.example"}, 421),
    "text/plain switch": ("POST", "/switch", b'{"mode": "blank"}', "text/plain", {}, 415),
    "unknown mode": ("POST", "/switch", b'{"mode": "nosuch"}', "application/json", {}, 404),
}


def write_catalog(home: Path, ports: dict[str, int]) -> None:
    (home / "presets" / "soak").mkdir(parents=True)
    (home / "modes").mkdir()
    (home / "inventory").mkdir()
    shutil.copytree(REPO / "templates", home / "templates")
    for sid, (driver, vram, sleep, residual, _) in SERVICES.items():
        (home / "presets" / "soak" / f"{sid}.yaml").write_text(
            f"id: {sid}\nname: {sid}\ndriver: {driver}\nport: {ports[sid]}\nvram_mb: {vram}\nmodel_size_mb: 1000\n"
            f"supports_sleep: true\nsleep_mode: {sleep}\nsleep_vram_mb: {residual}\nstartup_timeout: 30\n"
            "sim: {stream_delay_s: 0.04, infer_s: 0.002}\n")
    for mid, svcs in MODES.items():
        (home / "modes" / f"{mid}.yaml").write_text(f"id: {mid}\nname: {mid}\nservices: [{', '.join(svcs)}]\n")
    (home / "inventory" / "hosts.yaml").write_text(
        "hosts:\n  local:\n    connection: local\n    sim: true\n    gpu: {name: NVIDIA GeForce RTX 4090, total_mb: 24564}\n"
        f"    sim_timings: {{load_s: 0.3, wake_l1_s: 0.05, wake_l2_s: 0.2, release_lag_s: {LAG_S}}}\n"
        "    release_timeout_s: 20\n")


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reason_of(status: int, body: bytes) -> str:
    """The daemon's error message with its numbers as N (so equal reasons group), cut to 70 chars."""
    try:
        doc = json.loads(body)
        msg = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(msg, dict):
            msg = msg.get("message")
        msg = str(msg if msg is not None else doc)
    except ValueError:
        msg = body[:200].decode(errors="replace")
    msg = re.sub(r"\d+(\.\d+)?", "N", msg.replace("\n", " "))
    return msg[:70]


@dataclass
class Incarnation:
    pid: int
    up_at: float
    rss: list[tuple[float, int]] = field(default_factory=list)
    first_answer_at: float | None = None
    killed: bool = False


@dataclass
class Soak:
    env: dict[str, str]
    state: Path
    port: int
    seconds: float
    clients: int
    rng: random.Random
    log_path: Path
    t0: float = 0.0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    daemon_up: asyncio.Event = field(default_factory=asyncio.Event)
    proc: subprocess.Popen | None = None
    daemons: list[Incarnation] = field(default_factory=list)
    down_windows: list[list[float]] = field(default_factory=list)  # [killed at, up again at]
    service_kills: list[tuple[float, str, int]] = field(default_factory=list)
    sent: int = 0
    outcomes: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)
    lost_detail: list[str] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)
    pending: set = field(default_factory=set)
    wrong: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    samples: int = 0
    max_used: int = 0
    orphan_since: dict[int, float] = field(default_factory=dict)
    dead_since: dict[int, float] = field(default_factory=dict)
    adoption: list[str] = field(default_factory=list)
    adoption_failed: list[str] = field(default_factory=list)
    convergence: list[str] = field(default_factory=list)
    converged: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- the daemon -------------------------------------------------------------------------------
    async def start_daemon(self) -> None:
        import aiohttp

        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpumod_tasks.program", "router.serve", "--port", str(self.port),
             "--reconcile-s", str(RECONCILE_S), "--request-timeout", "20", "--concurrency", "6",
             "--max-body-mb", str(MAX_BODY_MB)], env=self.env, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.get(self.url + "/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the router daemon did not start; its log:\n{self.log_tail()}")
                await asyncio.sleep(0.05)
        self.daemons.append(Incarnation(self.proc.pid, self.now()))

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop_daemon(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    async def kill_and_restart_daemon(self) -> None:
        assert self.proc is not None
        self.daemon_up.clear()
        self.down_windows.append([self.now(), float("inf")])
        self.daemons[-1].killed = True
        self.sample_rss()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        # what runs once it is dead (it may have been mid-switch): the mode record and the pids
        before, recorded = self.service_pids(), self.recorded_mode()
        await asyncio.sleep(0.5)
        await self.start_daemon()
        after = self.service_pids()
        mode_after = await self.mode()
        kept = {sid for sid in before if before[sid] == after.get(sid) and pid_alive(before[sid])}
        gone = {sid for sid in before if sid not in kept}
        note = (f"daemon SIGKILLed at {self.down_windows[-1][0]:.1f} s and restarted (pid {self.proc.pid}): "
                f"mode on record {recorded}, the new daemon says {mode_after}; {len(kept)} of {len(before)} "
                "service(s) kept their pids")
        if recorded != mode_after or gone - self.recently_killed(5.0):
            self.adoption_failed.append(f"{note}; changed: {sorted(gone)}")
        self.adoption.append(note)
        self.down_windows[-1][1] = self.now()
        self.daemon_up.set()

    def recorded_mode(self) -> str | None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            return json.loads((self.state / "mode.json").read_text()).get("mode")
        return None

    def recently_killed(self, within: float) -> set[str]:
        return {sid for t, sid, _ in self.service_kills if self.now() - t < within}

    async def mode(self) -> str | None:
        import aiohttp

        with contextlib.suppress(aiohttp.ClientError, ValueError, asyncio.TimeoutError):
            async with aiohttp.ClientSession() as s, s.get(self.url + "/models",
                                                           timeout=aiohttp.ClientTimeout(total=10)) as r:
                return (await r.json()).get("mode")
        return None

    def sample_rss(self) -> None:
        # only once start_daemon has recorded the running process (not a new one still booting)
        if self.proc is not None and self.proc.poll() is None and self.daemons and self.daemons[-1].pid == self.proc.pid:
            kb = rss_kb(self.proc.pid)
            if kb:
                self.daemons[-1].rss.append((self.now(), kb))

    # -- the services -----------------------------------------------------------------------------
    def service_pids(self) -> dict[str, int]:
        """Service id -> pid, from the supervisor's pid files (what ``inv status`` reads)."""
        out = {}
        run = self.state / "supervisor" / "run"
        for f in run.glob("gpumod-*.service.pid") if run.exists() else []:
            with contextlib.suppress(OSError, ValueError):
                out[f.name[len("gpumod-"):-len(".service.pid")]] = int(f.read_text().split()[0])
        return out

    def kill_a_service(self) -> None:
        ours = str(self.state / "sim")
        live = [(sid, pid) for sid, pid in self.service_pids().items()
                if pid_alive(pid) and "gpumod_tasks.sim.server" in cmdline(pid) and ours in cmdline(pid)]
        if not live:
            return
        sid, pid = self.rng.choice(sorted(live))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            self.service_kills.append((self.now(), sid, pid))

    # -- the ledger -------------------------------------------------------------------------------
    def check_ledger(self, final: bool = False, states: dict[str, str] | None = None) -> None:
        self.samples += 1
        now, mono = time.time(), self.now()
        pids = self.service_pids()
        by_pid = {pid: sid for sid, pid in pids.items() if pid_alive(pid)}
        for path in sorted((self.state / "sim").glob("gpu*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                self.violations.append(f"{mono:.1f} s {path.name}: unreadable ({exc})")
                continue
            total, lag = int(data["total_mb"]), float(data.get("release_lag_s", LAG_S))
            charged = [a for a in data["allocs"] if a.get("release_at") is None or a["release_at"] > now]
            used = sum(int(a["mb"]) for a in charged)
            self.max_used = max(self.max_used, used)
            if used > total:
                self.violations.append(f"{mono:.1f} s {path.name}: {used} MB charged, over the total {total} MB")
            held: Counter = Counter()
            for a in charged:
                pid, mb = int(a["pid"]), int(a["mb"])
                if a.get("release_at") is not None:
                    if a["release_at"] - now > lag + 0.05:
                        self.violations.append(f"{mono:.1f} s {path.name}: {mb} MB of pid {pid} freed but "
                                               f"held {a['release_at'] - now:.2f} s more (lag {lag} s)")
                    elif final:
                        self.violations.append(f"final {path.name}: {mb} MB of pid {pid} ({a.get('owner')}) still in release")
                    continue
                if not pid_alive(pid):
                    first = self.dead_since.setdefault(pid, mono)
                    if mono - first > RECONCILE_S + lag + 1.0 or final:
                        self.violations.append(f"{mono:.1f} s {path.name}: {mb} MB still charged to dead pid {pid} "
                                               f"({a.get('owner')}) {mono - first:.1f} s after it died")
                    continue
                if pid in by_pid:
                    held[by_pid[pid]] += mb
                    continue
                first = self.orphan_since.setdefault(pid, mono)
                if mono - first > 2.0 or final:
                    self.violations.append(f"{mono:.1f} s {path.name}: {mb} MB held by live pid {pid} "
                                           f"({a.get('owner')}), no service's, for {mono - first:.1f} s")
            for sid, mb in held.items():
                if sid in SERVICES and mb > SERVICES[sid][1]:
                    self.violations.append(f"{mono:.1f} s {path.name}: {sid} holds {mb} MB, over its vram_mb "
                                           f"{SERVICES[sid][1]}")
            if final and states is not None:
                for sid, (_, vram, _, residual, _) in SERVICES.items():
                    want = {"running": vram, "sleeping": residual}.get(states.get(sid, ""), 0)
                    if held.get(sid, 0) != want:
                        self.violations.append(f"final {path.name}: {sid} ({states.get(sid)}) holds "
                                               f"{held.get(sid, 0)} MB, declared {want} MB")
        self.orphan_since = {p: t for p, t in self.orphan_since.items() if pid_alive(p) and p not in by_pid}

    async def monitor(self) -> None:
        tick = 0
        while not self.stop.is_set():
            self.check_ledger()
            if tick % 5 == 0:
                self.sample_rss()
            tick += 1
            await asyncio.sleep(0.2)

    # -- the clients ------------------------------------------------------------------------------
    def record(self, kind: str, outcome: str, t_start: float, detail: str = "", body: bytes = b"") -> None:
        self.by_kind[kind] += 1
        if outcome[:1] == "5" and outcome not in self.examples:  # the whole message, for the report
            self.examples[outcome] = f"{kind} at {t_start:.1f} s: {body[:800].decode(errors='replace')}"
        if outcome == "no answer":
            t_end = self.now()
            if any(a - 0.05 <= t_end and t_start <= b for a, b in self.down_windows):
                outcome = "dropped by our daemon kill"
            else:
                self.lost_detail.append(f"{t_start:.1f}-{t_end:.1f} s {kind}: {detail}")
                outcome = "lost"
        self.outcomes[outcome] += 1
        if outcome == "200" and self.daemons and self.daemons[-1].first_answer_at is None:
            self.daemons[-1].first_answer_at = self.now()
            self.sample_rss()

    def kill_during(self, model: str, t_start: float) -> bool:
        return any(sid == model and t >= t_start - 0.05 for t, sid, _ in self.service_kills)

    async def one(self, s: Any, kind: str, model: str) -> None:
        import aiohttp

        t_start = self.now()
        self.sent += 1
        stream = kind in ("stream", "cut")
        route = {"embeddings": "/v1/embeddings", "completions": "/v1/completions"}.get(kind, "/v1/chat/completions")
        if kind == "embeddings":
            body: dict[str, Any] = {"model": model, "input": WORDS}
        elif kind == "completions":
            body = {"model": model, "prompt": WORDS}
        else:
            body = {"model": model, "messages": [{"role": "user", "content": WORDS}], "stream": stream}
        label = f"{kind} {model}"
        try:
            async with s.post(self.url + route, json=body) as r:
                if r.status != 200:
                    raw = await r.read()
                    self.record(label, f"{r.status} {reason_of(r.status, raw)}", t_start, body=raw)
                    return
                if not stream:
                    doc = await r.json(content_type=None)
                    if kind != "embeddings" and doc.get("model") != model:
                        self.wrong.append(f"{label}: 200 from model {doc.get('model')!r}")
                    self.record(label, "200", t_start)
                    return
                if kind == "cut":
                    await r.content.readline()
                    r.close()  # the client leaves mid-stream
                    self.record(label, "cut by us", t_start)
                    return
                text = (await r.read()).decode(errors="replace")
                if text.rstrip().endswith("data: [DONE]") and '"finish_reason": "abort"' not in text:
                    self.record(label, "200", t_start)
                elif self.kill_during(model, t_start):
                    self.record(label, "cut by our service kill", t_start)
                else:
                    self.record(label, "no answer", t_start, f"200 stream ended early or aborted: {text[-120:]!r}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if stream and self.kill_during(model, t_start):
                self.record(label, "cut by our service kill", t_start)
            else:
                self.record(label, "no answer", t_start, f"{type(exc).__name__}: {exc}")

    async def malformed(self, s: Any, name: str) -> None:
        import aiohttp

        method, path, data, ctype, headers, want = MALFORMED[name]
        t_start = self.now()
        self.sent += 1
        hdrs = dict(headers)
        if ctype:
            hdrs["Content-Type"] = ctype
        try:
            async with s.request(method, self.url + path, data=data or None, headers=hdrs) as r:
                body = await r.read()
                if r.status != want:
                    self.wrong.append(f"malformed {name}: {r.status} (want {want}) {body[:120]!r}")
                self.record(f"malformed {name}", f"{r.status} {reason_of(r.status, body)}", t_start)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.record(f"malformed {name}", "no answer", t_start, f"{type(exc).__name__}: {exc}")

    async def client(self, i: int) -> None:
        import aiohttp

        rng = random.Random(self.rng.random())
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            n = 0
            while not self.stop.is_set() and self.sent < MAX_REQUESTS:
                await self.daemon_up.wait()
                if self.stop.is_set():
                    break
                x = rng.random() if n else (0.2 if i % 2 else 0.4)  # a cut stream and a whole one first
                n += 1
                if x < 0.12:
                    await self.malformed(s, rng.choice(sorted(MALFORMED)))
                    continue
                sid = rng.choice(sorted(SERVICES))
                routes = SERVICES[sid][4]
                if x < 0.27 and "chat" in routes:
                    kind = "cut"
                elif x < 0.45 and "chat" in routes:
                    kind = "stream"
                else:
                    kind = rng.choice(routes)
                await self.one(s, kind, sid)
                await asyncio.sleep(rng.uniform(0, 0.05))

    async def chaos(self) -> None:
        import aiohttp

        kill_daemon_at = 0.4 * self.seconds
        next_switch, next_kill = 1.0, 0.25 * self.seconds
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
            for name in sorted(MALFORMED):  # every kind once; the clients send more at random
                await self.malformed(s, name)
            while not self.stop.is_set():
                t = self.now()
                if kill_daemon_at is not None and t >= kill_daemon_at:
                    kill_daemon_at = None  # type: ignore[assignment]
                    await self.kill_and_restart_daemon()
                    continue
                if t >= next_kill:
                    self.kill_a_service()
                    next_kill = t + max(2.0, self.seconds / 6)
                if t >= next_switch:
                    next_switch = t + self.rng.uniform(2.0, 4.0)
                    task = asyncio.ensure_future(self.forced_switch(s))
                    self.pending.add(task)
                    task.add_done_callback(self.pending.discard)
                await asyncio.sleep(0.1)
            if self.pending:  # the session must outlive the switches it sent
                await asyncio.wait(set(self.pending), timeout=130)

    async def forced_switch(self, s: Any) -> None:
        import aiohttp

        await self.daemon_up.wait()
        if self.rng.random() < 0.5:
            body: dict[str, str] = {"mode": self.rng.choice([m for m in MODES if m != "blank"])}
        else:
            body = {"model_id": self.rng.choice(sorted(SERVICES))}
        t_start = self.now()
        self.sent += 1
        try:
            async with s.post(self.url + "/switch", json=body) as r:
                raw = await r.read()
                self.record("switch", "200" if r.status == 200 else f"{r.status} {reason_of(r.status, raw)}", t_start,
                            body=raw)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.record("switch", "no answer", t_start, f"{type(exc).__name__}: {exc}")

    # -- the run ----------------------------------------------------------------------------------
    def inv(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gpumod_tasks.program", *args], env=self.env,
                              capture_output=True, text=True, timeout=180)

    async def run(self) -> None:
        r = self.inv("mode.switch", "--name", FINAL_MODE)
        if r.returncode != 0:
            raise SystemExit(f"the first switch failed:\n{r.stdout}{r.stderr}")
        self.t0 = time.monotonic()
        await self.start_daemon()
        self.daemon_up.set()
        tasks = [asyncio.ensure_future(self.client(i)) for i in range(self.clients)]
        side = [asyncio.ensure_future(self.monitor()), asyncio.ensure_future(self.chaos())]
        await asyncio.sleep(self.seconds)
        self.stop.set()
        self.daemon_up.set()
        await asyncio.wait_for(asyncio.gather(*tasks, *side), 180)
        self.sample_rss()
        await self.converge()
        self.sample_rss()

    async def converge(self) -> None:
        import aiohttp

        notes = self.convergence
        ok = True
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            deadline = time.monotonic() + 10
            while True:  # a stream the client left frees its slot at once; give the counters a moment
                async with s.get(self.url + "/models") as r:
                    models = (await r.json())["models"]
                busy = {m["id"]: (m["in_flight"], m["waiting"]) for m in models if m["in_flight"] or m["waiting"]}
                if not busy or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        notes.append(f"in flight / waiting in the daemon after the clients stopped: {busy or 'none'}")
        ok &= not busy
        r1 = self.inv("mode.switch", "--name", FINAL_MODE, "--json")
        notes.append(f"inv mode.switch --name {FINAL_MODE}: exit {r1.returncode}")
        ok &= r1.returncode == 0
        r2 = self.inv("mode.verify", "--name", FINAL_MODE)
        notes.append(f"inv mode.verify --name {FINAL_MODE}: exit {r2.returncode}")
        ok &= r2.returncode == 0
        r3 = self.inv("mode.switch", "--name", FINAL_MODE, "--json")
        try:
            changed = [st.get("description", st.get("kind")) for st in json.loads(r3.stdout)["steps"]
                       if st.get("status") == "changed"]
        except (ValueError, KeyError, TypeError):
            changed = [f"unreadable answer: {r3.stdout[-200:]!r}"]
        notes.append(f"second switch: exit {r3.returncode}, changed steps: {changed or 'none'}")
        ok &= r3.returncode == 0 and not changed
        if not ok:
            notes.append("output: " + (r1.stdout + r1.stderr + r2.stdout + r2.stderr + r3.stderr)[-1500:])
        await asyncio.sleep(LAG_S + 0.3)
        st = self.inv("status", "--json")
        try:
            states = {sv["id"]: sv["state"] for sv in json.loads(st.stdout)["services"]}
        except (ValueError, KeyError, TypeError):
            states = {}
        before = len(self.violations)
        self.check_ledger(final=True, states=states)
        notes.append(f"ledger at rest: {'exact' if len(self.violations) == before else 'NOT as declared'} "
                     f"({', '.join(f'{k} {v}' for k, v in sorted(states.items()))})")
        ok &= len(self.violations) == before
        await asyncio.sleep(RECONCILE_S * 1.5)
        mode = await self.mode()
        notes.append(f"the daemon reports mode {mode}")
        ok &= mode == FINAL_MODE
        self.converged = bool(ok)

    # -- the summary ------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        answered: dict[str, int] = {k: v for k, v in self.outcomes.items() if k[:1] in "45"}
        ours = {k: self.outcomes[k] for k in ("cut by us", "dropped by our daemon kill", "cut by our service kill")}
        rss = []
        for i, d in enumerate(self.daemons):
            start = next(((t, kb) for t, kb in d.rss if d.first_answer_at is None or t >= d.first_answer_at - 0.01),
                         d.rss[0] if d.rss else None)
            end = d.rss[-1] if d.rss else None
            mid = next(((t, kb) for t, kb in d.rss if start and end and t >= (start[0] + end[0]) / 2), None)
            rss.append({"daemon": i + 1, "pid": d.pid, "up_at_s": round(d.up_at, 1), "killed": d.killed,
                        "start_kb": start[1] if start else None, "end_kb": end[1] if end else None,
                        "mid_kb": mid[1] if mid else None,
                        "start_at_s": round(start[0], 1) if start else None, "end_at_s": round(end[0], 1) if end else None})
        return {
            "workdir": str(self.state.parent), "seconds": self.seconds, "clients": self.clients, "sent": self.sent,
            "answered_200": self.outcomes["200"], "answered_error": answered,
            "ours": ours, "lost": self.outcomes["lost"], "lost_detail": self.lost_detail[:20],
            "wrong": self.wrong[:20], "by_kind": dict(self.by_kind), "examples_5xx": self.examples,
            "service_kills": [f"{t:.1f} s {sid} (pid {pid})" for t, sid, pid in self.service_kills],
            "daemon_kills": len(self.down_windows), "adoption": self.adoption, "adoption_failed": self.adoption_failed,
            "ledger": {"samples": self.samples, "max_used_mb": self.max_used, "violations": self.violations[:20]},
            "convergence": self.convergence, "converged": self.converged, "rss": rss,
            "ok": (not self.outcomes["lost"] and not self.wrong and not self.violations and not self.adoption_failed
                   and self.converged),
        }


def print_summary(s: dict[str, Any]) -> None:
    errs = sum(s["answered_error"].values())
    print(f"soak: {s['seconds']:g} s, {s['clients']} clients, {len(s['service_kills'])} service kill(s), "
          f"{s['daemon_kills']} daemon kill(s)")
    print(f"  sent {s['sent']}: answered 200 {s['answered_200']}, answered 4xx/5xx {errs}, "
          f"cut by us {s['ours']['cut by us']}, dropped by our daemon kill {s['ours']['dropped by our daemon kill']}, "
          f"cut by our service kill {s['ours']['cut by our service kill']}, lost {s['lost']}")
    for k, v in sorted(s["answered_error"].items(), key=lambda kv: (kv[0][:3], -kv[1])):
        print(f"    {v:>6}  {k}")
    for k, v in sorted(s["examples_5xx"].items()):
        print(f"  e.g. {k[:3]} {v}")
    for line in s["lost_detail"]:
        print(f"  LOST {line}")
    for line in s["wrong"]:
        print(f"  WRONG {line}")
    print(f"  service kills: {', '.join(s['service_kills']) or 'none'}")
    for line in s["adoption"]:
        print(f"  {line}")
    for line in s["adoption_failed"]:
        print(f"  NOT ADOPTED {line}")
    led = s["ledger"]
    print(f"  ledger: {led['samples']} samples, at most {led['max_used_mb']} MB charged; "
          f"invariants {'held' if not led['violations'] else 'BROKEN'}")
    for v in led["violations"]:
        print(f"    {v}")
    print(f"  convergence: {'yes' if s['converged'] else 'NO'}")
    for line in s["convergence"]:
        print(f"    {line}")
    for d in s["rss"]:
        def mb(kb: int | None) -> str:
            return f"{kb / 1024:.1f} MB" if kb else "?"
        print(f"  daemon {d['daemon']} (pid {d['pid']}, up at {d['up_at_s']} s{', SIGKILLed' if d['killed'] else ''}): "
              f"RSS {mb(d['start_kb'])} at {d['start_at_s']} s (first answer) -> {mb(d['mid_kb'])} halfway -> "
              f"{mb(d['end_kb'])} at {d['end_at_s']} s")
    if len(s["rss"]) > 1 and all(d["start_kb"] for d in s["rss"]):
        starts = ", ".join(f"{d['start_kb'] / 1024:.1f}" for d in s["rss"])
        print(f"  (each daemon compared with its own start; their starts: {starts} MB)")
    print(f"  result: {'ok' if s['ok'] else 'FAILED'}")


def reap_leftovers(tmp: Path) -> list[int]:
    """Pids of processes of this run that outlived sim.reset (killed here, by pid)."""
    left = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid() and str(tmp) in cmdline(int(d.name)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(d.name), signal.SIGKILL)
                left.append(int(d.name))
    return left


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help=f"length of the chaos (at most {MAX_SECONDS})")
    ap.add_argument("--clients", type=int, default=8, help=f"concurrent clients (at most {MAX_CLIENTS})")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="FILE", help="also write the summary as JSON to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (daemon log, state)")
    a = ap.parse_args()
    if not 1 <= a.seconds <= MAX_SECONDS or not 1 <= a.clients <= MAX_CLIENTS:
        ap.error(f"--seconds 1..{MAX_SECONDS}, --clients 1..{MAX_CLIENTS}")
    tmp = Path(tempfile.mkdtemp(prefix="gpumod-soak-"))
    free = free_ports(len(SERVICES) + 1)
    ports = dict(zip(SERVICES, free))
    write_catalog(tmp / "home", ports)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUMOD_", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                                                      "https_proxy"))}
    env.update(GPUMOD_HOME=str(tmp / "home"), GPUMOD_STATE_DIR=str(tmp / "state"), COLUMNS="160",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    soak = Soak(env=env, state=tmp / "state", port=free[-1], seconds=a.seconds, clients=a.clients,
                rng=random.Random(a.seed), log_path=tmp / "router.log")
    try:
        asyncio.run(soak.run())
        summary = soak.summary()
    finally:
        soak.stop_daemon()
        reset = soak.inv("sim.reset")
        left = reap_leftovers(tmp)
        if reset.returncode != 0 or left:
            print(f"cleanup: sim.reset exit {reset.returncode}; processes left over and killed: {left}", file=sys.stderr)
        if not soak.converged or soak.violations or soak.outcomes["lost"] or soak.adoption_failed:
            print(f"the daemon's log, last lines:\n{soak.log_tail(40)}", file=sys.stderr)
        if a.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print_summary(summary)
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
