"""Shared fixtures: an isolated simulated GPU host with its own small catalog on free ports."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


# Test hosts use 10.213.(NET_BASE+i).0/24; separate checkouts testing side by side set
# GPUMOD_TEST_NET_BASE apart (0, 10, 20, ...) so their namespaces and addresses never collide.
NET_BASE = int(os.environ.get("GPUMOD_TEST_NET_BASE", "0"))


def wait_for(pred, timeout: float, step: float = 0.05) -> bool:
    """Poll ``pred`` until it holds or ``timeout`` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class SimHost:
    root: Path  # GPUMOD_HOME: presets/, modes/, templates/, inventory/
    state: Path  # GPUMOD_STATE_DIR
    ports: dict[str, int]

    def write_preset(self, category: str, sid: str, text: str) -> None:
        d = self.root / "presets" / category
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{sid}.yaml").write_text(text)

    def write_mode(self, mid: str, services: list[str]) -> None:
        body = "".join(f"  - {s}\n" for s in services) if services else ""
        (self.root / "modes" / f"{mid}.yaml").write_text(f"id: {mid}\nname: {mid}\nservices:{' []' if not services else ''}\n{body}")

    def write_inventory(self, extra: str = "", **local: object) -> None:
        lines = ["hosts:", "  local:", "    connection: local", "    sim: true",
                 "    gpu: {name: NVIDIA GeForce RTX 4090, total_mb: 24564}",
                 "    sim_timings: {load_s: 0.2, wake_l1_s: 0.05, wake_l2_s: 0.2, release_lag_s: 0.25}",
                 "    release_timeout_s: 10"]
        for k, v in local.items():
            lines.append(f"    {k}: {v}")
        (self.root / "inventory" / "hosts.yaml").write_text("\n".join(lines) + "\n" + extra)

    def inv(self, *argv: str) -> tuple[int, str, str]:
        return run_cli(list(argv))

    def stop_all(self) -> None:
        run_dir = self.state / "supervisor" / "run"
        pids = []
        for f in run_dir.glob("*.pid") if run_dir.exists() else []:
            with contextlib.suppress(ValueError, OSError):
                pids.append(int(f.read_text().strip()))
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 5
        for pid in pids:
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.02)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run the program in-process; return (exit code, stdout, stderr)."""
    from gpumod_tasks.program import make_program

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            make_program().run(["inv", *argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


PRESETS = {
    # category, id, driver, vram, sleep_mode, extra yaml
    "emb": ("embedding", "vllm", 2500, "l1", "model_size_mb: 1200\n"),
    "doc": ("embedding", "vllm", 5000, "l1", "model_size_mb: 2000\n"),
    "big": ("chat", "vllm", 9000, "l2", "model_size_mb: 3000\ncontext_size: 8192\nkv_cache_per_1k: 100\n"),
    "router": ("code", "llamacpp", 6000, "router", "model_size_mb: 2000\n"),
    "asr": ("speech", "fastapi", 3000, "none", "model_size_mb: 500\nunit_vars:\n  command: [python, -m, asr]\n"),
    "api": ("speech", "fastapi", 1000, "none", "model_size_mb: 100\ndepends_on: [emb]\nunit_vars:\n  command: [python, -m, api]\n"),
}


@pytest.fixture
def sim_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimHost]:
    root = tmp_path / "home"
    state = tmp_path / "state"
    (root / "presets").mkdir(parents=True)
    (root / "modes").mkdir()
    (root / "inventory").mkdir()
    shutil.copytree(REPO / "templates", root / "templates")
    ports = dict(zip(PRESETS, free_ports(len(PRESETS))))
    host = SimHost(root=root, state=state, ports=ports)
    for sid, (cat, driver, vram, sleep, extra) in PRESETS.items():
        sleep_lines = f"supports_sleep: {'true' if sleep != 'none' else 'false'}\nsleep_mode: {sleep}\n"
        host.write_preset(cat, sid, f"id: {sid}\nname: {sid} service\ndriver: {driver}\nport: {ports[sid]}\nvram_mb: {vram}\n"
                                    f"startup_timeout: 20\n{sleep_lines}{extra}")
    host.write_mode("blank", [])
    host.write_mode("rag", ["emb", "doc"])
    host.write_mode("code", ["emb", "router"])
    host.write_mode("chat", ["emb", "big"])
    host.write_mode("speak", ["emb", "asr", "api"])
    host.write_inventory()
    monkeypatch.setenv("GPUMOD_HOME", str(root))
    monkeypatch.setenv("GPUMOD_STATE_DIR", str(state))
    monkeypatch.setenv("COLUMNS", "160")
    try:
        yield host
    finally:
        host.stop_all()


@pytest.fixture
def repo_catalog():
    from gpumod_tasks.catalog import load_catalog

    return load_catalog(REPO)


def pytest_configure(config: pytest.Config) -> None:
    sys.path.insert(0, str(REPO))


@dataclass
class SystemdBox:
    """A simulated GPU host whose services are real systemd units in a private systemd."""

    sim: SimHost
    sd: object  # nshost.PrivateSystemd
    state: Path
    unit_dir: str

    def inv(self, *argv: str) -> tuple[int, str, str]:
        return run_cli(["-H", "box", *argv])

    def unit(self, sid: str) -> str:
        return f"gpumod-{sid}.service"


def box_inventory(name: str, pidfile: Path, state: Path, unit_dir: str, extra: dict | None = None, sim: bool = True) -> str:
    lines = [f"  {name}:", "    connection: nsenter", f"    nsenter: {pidfile}", f"    sim: {str(sim).lower()}",
             "    service_manager: systemd", f"    unit_dir: {unit_dir}", f"    state_dir: {state}",
             "    gpu: {name: NVIDIA GeForce RTX 4090, total_mb: 24564}",
             "    sim_timings: {load_s: 0.2, wake_l1_s: 0.05, wake_l2_s: 0.2, release_lag_s: 0.25}",
             "    release_timeout_s: 10"]
    lines += [f"    {k}: {v}" for k, v in (extra or {}).items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def systemd_box(sim_host: SimHost, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SystemdBox]:
    """Boot a private systemd (PID 1 of its own PID+mount namespace) for one test."""
    from nshost import PrivateSystemd, unavailable_reason

    why = unavailable_reason()
    if why:
        pytest.skip(f"private systemd unavailable: {why}")
    marker = request.node.get_closest_marker("box")
    opts = dict(marker.kwargs) if marker else {}
    user = opts.pop("scope", "system") == "user"
    sd = PrivateSystemd(log=tmp_path / "systemd.log", pidfile=tmp_path / "box.pid").boot()
    state = tmp_path / "box-state"
    unit_dir = "/run/user/0/systemd/user" if user else "/run/systemd/system"
    if user:
        sd.systemctl("start", "user@0.service")
        opts["scope"] = "user"
    sim_host.write_inventory(box_inventory("box", tmp_path / "box.pid", state, unit_dir, opts))
    try:
        yield SystemdBox(sim=sim_host, sd=sd, state=state, unit_dir=unit_dir)
    finally:
        sd.shutdown()


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    """The real llama-server, built once from the pinned llama-cpp-python sdist and cached under
    ~/.cache/gpumod (a fresh machine builds it here, ~6-7 minutes on 2 cores). A failed build fails
    the tests that need it; it is never skipped."""
    from gpumod_tasks.llamacpp.build import build_llama_server

    built = build_llama_server(progress=lambda m: print(f"[llama-server build] {m}", file=sys.stderr, flush=True))
    return built.path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory of three tiny GGUFs (random weights, ~470 KB each)."""
    from gpumod_tasks.llamacpp.gguf_tiny import write_models_dir

    d = tmp_path_factory.mktemp("gguf")
    write_models_dir(d, ["alpha", "beta", "gamma"])
    return d


@dataclass
class SshLab:
    """Remote test hosts over real SSH: each its own network namespace with a private systemd and
    Debian's sshd; the controller reaches them with an ssh_config (-S) naming a key and a
    known_hosts file of the test's own."""

    sim: SimHost
    boxes: list
    ssh_config: Path
    known_hosts: Path

    def inv(self, *argv: str) -> tuple[int, str, str]:
        return run_cli(["-S", str(self.ssh_config), *argv])


def ssh_inventory(boxes: list, tmp_path: Path, extra: dict | None = None) -> str:
    lines = ["hosts:"]
    for i, b in enumerate(boxes, 1):
        lines += [f"  box{i}:", f"    ssh: root@{b.addr}", "    sim: true", "    service_manager: systemd",
                  "    unit_dir: /run/systemd/system", f"    state_dir: {tmp_path}/box{i}-state",
                  "    gpu: {name: NVIDIA GeForce RTX 4090, total_mb: 24564}",
                  "    sim_timings: {load_s: 0.2, wake_l1_s: 0.05, wake_l2_s: 0.2, release_lag_s: 0.25}",
                  "    release_timeout_s: 10", "    default_mode: rag", "    warm_modes: [rag]"]
        lines += [f"    {k}: {v}" for k, v in (extra or {}).items()]
    lines += ["groups:", "  lab: [" + ", ".join(f"box{i}" for i in range(1, len(boxes) + 1)) + "]"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def ssh_lab(sim_host: SimHost, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SshLab]:
    from nshost import SshBox, unavailable_reason

    why = unavailable_reason() or (None if shutil.which("sshd") or os.path.exists("/usr/sbin/sshd") else
                                   "openssh-server is not installed (scripts/test.sh installs it)")
    if why:
        pytest.skip(f"SSH test hosts unavailable: {why}")
    marker = request.node.get_closest_marker("boxes")
    n = marker.args[0] if marker else 1
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    known = tmp_path / "known_hosts"
    known.touch()
    boxes = []
    try:
        for i in range(1, n + 1):
            boxes.append(SshBox(tmp_path / f"box{i}", NET_BASE + i).up(key, known))
        cfg = tmp_path / "ssh_config"
        cfg.write_text(f"Host 10.213.*\n  User root\n  IdentityFile {key}\n  UserKnownHostsFile {known}\n")
        (sim_host.root / "inventory" / "hosts.yaml").write_text(ssh_inventory(boxes, tmp_path))
        yield SshLab(sim=sim_host, boxes=boxes, ssh_config=cfg, known_hosts=known)
    finally:
        for b in boxes:
            b.down()


@pytest.fixture
def daemon_factory(sim_host: SimHost) -> Iterator[object]:
    """Router daemons started in-process (tests/routerd.py) on the simulated host; stopped after."""
    from routerd import start_daemon

    made: list = []

    def make(**opts):
        d = start_daemon(**opts)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()
