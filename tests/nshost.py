"""Test hosts built on this machine: a private systemd as PID 1 of a PID+mount namespace.

``PrivateSystemd.boot()`` follows the recipe of the developers' brief: the two tmpfiles bind mounts
keep systemd-tmpfiles from emptying the machine's /tmp (the namespace shares the disk).  Units go to
``/run/systemd/system`` inside it, which is a tmpfs of its own and vanishes with it.  Commands enter
it with ``nsenter -t PID -m -p``; HTTP is shared with this machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BOOT = ("mount --bind /dev/null /usr/lib/tmpfiles.d/tmp.conf; "
        "mount --bind /dev/null /usr/lib/tmpfiles.d/x11.conf; "
        "exec /lib/systemd/systemd --system --unit=basic.target")


def unavailable_reason() -> str | None:
    """Why a private systemd cannot boot here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root (unshare --pid --mount)"
    for tool in ("unshare", "nsenter", "systemctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.path.exists("/lib/systemd/systemd"):
        return "/lib/systemd/systemd is not installed"
    for f in ("/usr/lib/tmpfiles.d/tmp.conf", "/usr/lib/tmpfiles.d/x11.conf"):
        if not os.path.exists(f):
            return f"{f} is missing (the bind mount that protects /tmp needs it)"
    return None


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class PrivateSystemd:
    log: Path
    prefix: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", NAME) to boot it in a network namespace
    outer: subprocess.Popen | None = None
    pid: int = 0  # systemd's pid as seen from this machine
    pidfile: Path | None = None
    started: list[str] = field(default_factory=list)

    def boot(self, timeout: float = 60) -> PrivateSystemd:
        argv = [*self.prefix, "unshare", "--pid", "--fork", "--mount", "--mount-proc", "--kill-child", "sh", "-c", BOOT]
        with open(self.log, "wb") as fh:
            self.outer = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.pid:
            if self.outer.poll() is not None:
                raise RuntimeError(f"private systemd exited at once ({self.outer.returncode}): {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("private systemd: no systemd process appeared")
            # the unshare process (maybe below ip-netns-exec, which execs) forks the namespace's PID 1
            for kid in _children(self.outer.pid):
                if Path(f"/proc/{kid}/comm").read_text().strip() == "systemd":
                    self.pid = kid
            time.sleep(0.05)
        while True:
            r = self.run(["systemctl", "is-system-running"], check=False)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"private systemd did not come up (state {state!r}): {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        if self.pidfile:
            self.pidfile.write_text(f"{self.pid}\n")
        return self

    def run(self, argv: list[str], check: bool = True, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        r = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-p", "--", *argv], capture_output=True, text=True,
                           input=input, timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(["systemctl", *args], check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        r = self.systemctl("show", unit, "-p", ",".join(props))
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    def wait_for(self, unit: str, prop: str, want: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            got = self.show(unit, prop).get(prop, "")
            if got == want or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def shutdown(self) -> None:
        if not self.pid or self.outer is None:
            return
        # a system manager exits on `systemctl exit` when it runs in a container (its own PID namespace)
        self.run(["systemctl", "exit"], check=False, timeout=10)
        try:
            self.outer.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.outer is not None and self.outer.poll() is None:
            try:
                os.killpg(self.outer.pid, signal.SIGKILL)  # --kill-child takes the namespace down with it
            except OSError:
                pass
            self.outer.wait(timeout=10)


@dataclass
class NetnsLink:
    """A network namespace joined to this machine by a veth pair: this side ADDR.1, inside ADDR.2."""

    name: str
    index: int  # 1..250: the /24 used is 10.213.INDEX.0

    @property
    def host_addr(self) -> str:
        return f"10.213.{self.index}.1"

    @property
    def box_addr(self) -> str:
        return f"10.213.{self.index}.2"

    def create(self) -> NetnsLink:
        self.destroy()
        outer, inner = f"gpm{self.index}h", f"gpm{self.index}b"
        for argv in (["ip", "netns", "add", self.name],
                     ["ip", "link", "add", outer, "type", "veth", "peer", "name", inner],
                     ["ip", "link", "set", inner, "netns", self.name],
                     ["ip", "addr", "add", f"{self.host_addr}/24", "dev", outer],
                     ["ip", "link", "set", outer, "up"],
                     ["ip", "netns", "exec", self.name, "ip", "addr", "add", f"{self.box_addr}/24", "dev", inner],
                     ["ip", "netns", "exec", self.name, "ip", "link", "set", inner, "up"],
                     ["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"]):
            subprocess.run(argv, check=True, capture_output=True, text=True)
        return self

    def destroy(self) -> None:
        subprocess.run(["ip", "link", "del", f"gpm{self.index}h"], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


SSHD_CONFIG = """\
Port 22
ListenAddress {addr}
HostKey {dir}/host_ed25519
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys .ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp /usr/lib/openssh/sftp-server
"""


@dataclass
class SshBox:
    """A remote test host: its own network namespace, a private systemd as PID 1 inside, Debian's
    sshd as a unit of that systemd, reached from here over real SSH at ``addr``."""

    workdir: Path
    index: int
    link: NetnsLink | None = None
    sd: PrivateSystemd | None = None
    homes: list[Path] = field(default_factory=list)

    @property
    def addr(self) -> str:
        assert self.link is not None
        return self.link.box_addr

    def up(self, client_key: Path, known_hosts: Path) -> SshBox:
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        self.link = NetnsLink(f"gpumod-test{self.index}", self.index).create()
        self.sd = PrivateSystemd(log=d / "systemd.log", prefix=("ip", "netns", "exec", self.link.name)).boot()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_ed25519")], check=True)
        (d / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
        (d / "sshd_config").write_text(SSHD_CONFIG.format(addr=self.addr, dir=d))
        # sshd refuses to start without its privilege-separation directory (a tmpfs /run here)
        self.sd.run(["mkdir", "-p", "/run/sshd"])
        self.sd.run(["systemd-run", "--unit", "gpumod-test-sshd", "--property", "Type=simple",
                     "/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")])
        deadline = time.monotonic() + 20
        while True:
            r = subprocess.run(["ssh-keyscan", "-T", "2", "-t", "ed25519", self.addr], capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip():
                with open(known_hosts, "a") as fh:
                    fh.write(r.stdout)
                return self
            if time.monotonic() > deadline:
                log = self.sd.run(["journalctl", "-u", "gpumod-test-sshd", "--no-pager"], check=False).stdout
                raise RuntimeError(f"sshd in {self.link.name} did not answer: {log[-2000:]}")
            time.sleep(0.1)

    def add_user(self, name: str, uid: int = 1500, sudo: bool = True) -> Path:
        """A non-root login on this box only: copies of /etc/passwd, group, shadow (and a sudoers
        with passwordless sudo) bind-mounted over the originals inside the box's own mount
        namespace; this machine's /etc is never written. Returns the user's home."""
        assert self.sd is not None
        import tempfile

        d = self.workdir / "etc"
        d.mkdir(exist_ok=True)
        # the test's own tmp dirs are root-only (0700): the user's home must be reachable by it
        home = Path(tempfile.mkdtemp(prefix=f"gpumod-test-home-{name}-"))
        self.homes.append(home)
        os.chmod(home, 0o755)
        (home / ".ssh").mkdir()
        (home / ".ssh" / "authorized_keys").write_text((self.workdir / "authorized_keys").read_text())
        for path in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
            os.chown(path, uid, uid)
        entries = {"passwd": f"{name}:x:{uid}:{uid}:gpumod test user:{home}:/bin/sh\n",
                   "group": f"{name}:x:{uid}:\n",
                   "shadow": f"{name}:*:19000:0:99999:7:::\n"}  # '*': no password, not locked (keys work)
        for f, line in entries.items():
            src = Path(f"/etc/{f}")
            (d / f).write_text(src.read_text() + line)
            os.chmod(d / f, src.stat().st_mode & 0o777)
            self.sd.run(["mount", "--bind", str(d / f), f"/etc/{f}"])
        if sudo:
            (d / "sudoers").write_text(f"Defaults env_reset\nroot ALL=(ALL:ALL) ALL\n{name} ALL=(ALL) NOPASSWD: ALL\n")
            os.chmod(d / "sudoers", 0o440)
            self.sd.run(["mount", "--bind", str(d / "sudoers"), "/etc/sudoers"])
        return home

    def down(self) -> None:
        if self.sd is not None:
            self.sd.shutdown()
        for h in self.homes:
            shutil.rmtree(h, ignore_errors=True)
        if self.link is not None:
            self.link.destroy()
