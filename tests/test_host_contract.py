"""The Host contract: one test body per promise, run over every kind of host gpumod drives — this
machine, a namespace of it (a private systemd entered with nsenter), and a box over real SSH, as
root and as a plain user with sudo.  Boxes are booted once for the module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import NET_BASE, free_ports

from gpumod_tasks.errors import CommandFailed, HostError
from gpumod_tasks.host import Host, connect
from gpumod_tasks.inventory import HostSpec

KINDS = ("local", "nsenter", "ssh", "ssh-sudo")


@dataclass
class HostUnderTest:
    host: Host
    scratch: str  # a directory on the host the login user may write into
    root_dir: str  # a directory only root may enter (made through sudo)


@pytest.fixture(scope="module")
def ns_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from nshost import PrivateSystemd, unavailable_reason

    why = unavailable_reason()
    if why:
        pytest.skip(f"private systemd unavailable: {why}")
    d = tmp_path_factory.mktemp("nsbox")
    sd = PrivateSystemd(log=d / "systemd.log").boot()
    try:
        yield sd
    finally:
        sd.shutdown()


@pytest.fixture(scope="module")
def ssh_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, Path, Path]]:
    from nshost import SshBox, unavailable_reason

    why = unavailable_reason() or (None if shutil.which("sshd") or os.path.exists("/usr/sbin/sshd") else
                                   "openssh-server is not installed (scripts/test.sh installs it)")
    if why:
        pytest.skip(f"SSH test hosts unavailable: {why}")
    if not shutil.which("sudo"):
        pytest.skip("sudo is not installed (scripts/test.sh installs it)")
    d = tmp_path_factory.mktemp("sshbox")
    key, known = d / "id_ed25519", d / "known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    known.touch()
    box = SshBox(d / "box", NET_BASE + 9)
    try:
        box.up(key, known)
        home = box.add_user("gpu")
        cfg = d / "ssh_config"
        cfg.write_text(f"Host {box.addr}\n  IdentityFile {key}\n  UserKnownHostsFile {known}\n")
        yield box, cfg, home
    finally:
        box.down()


@pytest.fixture(scope="module", params=KINDS)
def hut(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostUnderTest]:
    kind = request.param
    if kind in ("local", "nsenter"):
        d = tmp_path_factory.mktemp(f"contract-{kind}")
        if kind == "local":
            host = connect(HostSpec(name="here"))
        else:
            sd = request.getfixturevalue("ns_box")
            host = connect(HostSpec(name="ns", connection="nsenter", nsenter=str(sd.pid)))  # type: ignore[attr-defined]
        scratch = str(d)
    else:
        from fabric import Config

        box, cfg, home = request.getfixturevalue("ssh_box")
        user = "root" if kind == "ssh" else "gpu"
        spec = HostSpec(name=kind, connection="ssh", ssh_host=box.addr, ssh_user=user)
        host = connect(spec, fabric_config=Config(runtime_ssh_path=str(cfg)))
        scratch = f"{tmp_path_factory.mktemp('contract-ssh')}" if user == "root" else f"{home}/scratch"
        host.makedirs(scratch)
    root_dir = f"{scratch}/root-only"
    host.run(["sh", "-c", 'mkdir -p -- "$1" && chown 0:0 "$1" && chmod 700 "$1"', "sh", root_dir], sudo=True)
    try:
        yield HostUnderTest(host, scratch, root_dir)
    finally:
        host.close()


# -- commands ----------------------------------------------------------------------------------
def test_run_returns_exit_code_stdout_and_stderr_and_accepted_codes(hut):
    h = hut.host
    r = h.run(["sh", "-c", "echo out; echo err >&2; exit 3"], ok=(0, 3))
    assert (r.exit_code, r.stdout, r.stderr, r.ok) == (3, "out\n", "err\n", False)
    assert r.host == h.name and r.argv == ("sh", "-c", "echo out; echo err >&2; exit 3")
    with pytest.raises(CommandFailed) as ei:
        h.run(["sh", "-c", "echo partial; echo broken >&2; exit 7"], what="the failing step")
    res = ei.value.result
    assert (res.exit_code, res.stdout, res.stderr) == (7, "partial\n", "broken\n")
    assert str(ei.value) == f"[{h.name}] the failing step: exit code 7"
    assert ei.value.details() == ["stderr: broken", "stdout: partial"]
    assert h.run(["true"]).ok


def test_argv_words_stdin_and_env_arrive_unchanged(hut):
    h = hut.host
    words = ["a b", "it's", "$HOME", "", "*", "back\\slash", 'qu"ote', "ünïcode"]
    r = h.run(["printf", "%s|", *words])
    assert r.stdout == "|".join(words) + "|"
    assert h.run(["cat"], input="line 1\nline 'two' $x\n").stdout == "line 1\nline 'two' $x\n"
    assert h.run(["sh", "-c", 'printf %s "$GPUMOD_X"'], env={"GPUMOD_X": "v w $y"}).stdout == "v w $y"


def test_missing_command_is_exit_127(hut):
    r = hut.host.run(["gpumod-no-such-command-x"], ok=range(256))
    assert r.exit_code == 127


def test_timeout_raises_and_the_host_still_works(hut):
    h = hut.host
    t0 = time.monotonic()
    with pytest.raises(HostError, match="timed out"):
        h.run(["sleep", "5"], timeout=0.5)
    assert time.monotonic() - t0 < 4
    assert h.run(["echo", "still here"]).stdout == "still here\n"


def test_sudo_runs_as_root_and_only_when_asked(hut):
    h = hut.host
    uid = h.run(["id", "-u"]).stdout.strip()
    assert (uid == "0") == h.is_root
    assert h.run(["id", "-u"], sudo=True).stdout.strip() == "0"
    assert h.run(["cat"], sudo=True, input="through sudo\n").stdout == "through sudo\n"


def test_home_and_expand(hut):
    h = hut.host
    home = h.run(["sh", "-c", 'printf %s "$HOME"']).stdout
    assert h.home == home and h.expand("~") == home and h.expand("~/a/b") == f"{home}/a/b"
    assert h.expand("/abs/~x") == "/abs/~x" and h.expand("rel") == "rel"


# -- files ---------------------------------------------------------------------------------------
def _stat(h: Host, path: str, sudo: bool = False) -> tuple[str, str, str]:
    mode, ino, owner = h.run(["stat", "-c", "%a %i %u", "--", path], sudo=sudo).stdout.split()
    return mode, ino, owner


def test_write_file_is_atomic_idempotent_and_keeps_mode(hut):
    h, d = hut.host, hut.scratch
    path = f"{d}/new/dir/unit.conf"
    text = "first\nünïcode ✓\n"
    assert h.read_file(path) is None
    assert h.write_file(path, text, mode=0o640) is True
    assert h.read_file(path) == text
    mode, ino, _ = _stat(h, path)
    assert mode == "640"
    assert h.write_file(path, text, mode=0o640) is False  # unchanged: nothing written
    assert _stat(h, path)[1] == ino
    # the new text is renamed over the old file (a new inode), never truncated and rewritten in
    # place, and no temporary file is left beside it
    assert h.write_file(path, "second\n", mode=0o755) is True
    mode2, ino2, _ = _stat(h, path)
    assert (h.read_file(path), mode2) == ("second\n", "755") and ino2 != ino
    listing = h.run(["ls", "-A", f"{d}/new/dir"]).stdout.split()
    assert listing == ["unit.conf"]
    assert h.write_file(f"{d}/empty", "") is True and h.read_file(f"{d}/empty") == ""


def test_no_partial_file_is_ever_visible(hut):
    h, d = hut.host, hut.scratch
    path = f"{d}/big.txt"
    small, big = "s\n" * 10, "b" * 200_000 + "\n"
    h.write_file(path, small)
    # a reader on the host reads the file over and over while it is rewritten: it only ever sees
    # one whole version or the other
    script = ('end=$(( $(date +%s) + 3 )); seen=; while [ "$(date +%s)" -lt "$end" ]; do '
              'n=$(wc -c < "$1"); case " $seen " in *" $n "*) ;; *) seen="$seen $n";; esac; '
              '[ -e "$1.stop" ] && break; done; echo $seen')
    import threading

    out: dict[str, str] = {}
    reader = threading.Thread(target=lambda: out.setdefault("sizes", h.run(["sh", "-c", script, "sh", path], timeout=30).stdout))
    reader.start()
    time.sleep(0.2)
    for i in range(6):
        h.write_file(path, big if i % 2 == 0 else small)
    h.write_file(f"{path}.stop", "")
    reader.join(30)
    sizes = set(out["sizes"].split())
    assert sizes <= {str(len(small)), str(len(big))}, sizes


def test_write_and_remove_through_sudo(hut):
    h, d = hut.host, hut.root_dir
    path = f"{d}/secret.unit"
    assert h.write_file(path, "root's\n", mode=0o600, sudo=True) is True
    assert h.write_file(path, "root's\n", mode=0o600, sudo=True) is False
    assert h.read_file(path, sudo=True) == "root's\n"
    mode, _, owner = _stat(h, path, sudo=True)
    assert (mode, owner) == ("600", "0")  # never left owned by the login user
    assert h.remove_file(path, sudo=True) is True
    assert h.remove_file(path, sudo=True) is False
    assert h.run(["test", "-e", path], sudo=True, ok=(0, 1)).exit_code == 1


def test_a_file_the_login_user_may_not_reach_is_unreadable_not_missing(hut):
    h, d = hut.host, hut.root_dir
    h.write_file(f"{d}/private", "x\n", mode=0o600, sudo=True)
    if h.is_root:
        assert h.read_file(f"{d}/private") == "x\n"
    else:
        with pytest.raises(CommandFailed, match="exit code 13"):
            h.read_file(f"{d}/private")
        with pytest.raises(CommandFailed):
            h.read_file(f"{d}/absent")  # cannot tell: never "missing"
    assert h.read_file(f"{d}/absent", sudo=True) is None


def test_remove_file_and_makedirs(hut):
    h, d = hut.host, hut.scratch
    h.makedirs(f"{d}/m/n/o")
    assert h.run(["test", "-d", f"{d}/m/n/o"], ok=(0, 1)).exit_code == 0
    h.makedirs(f"{d}/m/n/o")  # exists already: fine
    assert h.write_file(f"{d}/m/gone.txt", "x") is True
    assert h.remove_file(f"{d}/m/gone.txt") is True
    assert h.remove_file(f"{d}/m/gone.txt") is False
    assert h.read_file(f"{d}/m/gone.txt") is None


# -- HTTP to a port on the host ----------------------------------------------------------------
def test_http_reaches_a_server_on_the_hosts_loopback(hut):
    h, d = hut.host, hut.scratch
    port = free_ports(1)[0]
    h.write_file(f"{d}/www/hello.txt", f"hello from {h.name}\n")
    py = sys.executable if h.colocated else "python3"
    r = h.run(["sh", "-c", 'cd "$1" && setsid "$2" -m http.server --bind 127.0.0.1 "$3" >/dev/null 2>&1 </dev/null & echo $!',
               "sh", f"{d}/www", py, str(port)])
    pid = r.stdout.strip()
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                resp = h.http.get(f"{h.base_url(port)}/hello.txt")
                break
            except Exception:  # not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert resp.status_code == 200 and resp.text == f"hello from {h.name}\n"
        assert h.http.get(f"{h.base_url(port)}/missing").status_code == 404
    finally:
        h.run(["kill", pid], ok=(0, 1))
