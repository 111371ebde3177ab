"""Containers (``driver: docker``): ``docker run`` with the isolation gpumod promises, a health probe.

Refused, because each lets the container reach past its isolation: ``docker.network`` host,
macvlan or another container's; in ``docker.extra_args`` any flag that shares a host namespace
(``--network/--net/--pid/--ipc/--uts/--userns/--cgroupns host``), adds privileges
(``--privileged``, ``--cap-add``, ``--security-opt``, ``--device``), or publishes or mounts past the
checked ``docker.ports`` / ``docker.volumes`` (``-p``, ``-P``, ``-v``, ``--mount``, ``--volumes-from``);
a volume whose source, normalized (``/etc/../etc`` is ``/etc``), is or holds or lies under a
system path.  Ports publish on 127.0.0.1 unless the preset names an address.  ``docker.environment``
values reach the container as ``-e NAME`` from the unit's private environment file, never on the
command line (``ps`` shows command lines to everyone).
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from ..errors import RenderError
from . import http
from .base import Command, Engine, Probe
from .vllm import Vllm

if TYPE_CHECKING:
    from ..catalog.model import Preset
    from ..host.base import Host
    from ..hostfacts import HostFacts
    from ..inventory import HostSpec

UNSAFE_MOUNT_SOURCES = ("/", "/etc", "/var/run/docker.sock", "/run/docker.sock", "/var/run", "/run", "/proc", "/sys",
                        "/dev", "/boot", "/root", "/home", "/usr", "/bin", "/sbin", "/lib", "/var/lib/docker")
# flags refused whatever their value (set the matching docker: field instead, which is checked)
REFUSED_FLAGS = ("--privileged", "--cap-add", "--security-opt", "--device", "--device-cgroup-rule",
                 "--network", "--net", "--publish", "--publish-all", "--volume", "--mount", "--volumes-from")
# flags refused when they share a host namespace
NAMESPACE_FLAGS = ("--pid", "--ipc", "--uts", "--userns", "--cgroupns")
SHORT_REFUSED = "vpP"  # -v (volume), -p (publish), -P (publish all)
SHORT_BOOLEAN = "itd"  # may be clustered before them: -itp 80:80


def normalize_source(src: str) -> str:
    """A mount source as the kernel resolves its dots: ``/etc/../etc`` and ``//etc/`` are ``/etc``."""
    if not src.startswith("/"):
        return src  # a named volume
    return posixpath.normpath("/" + src.lstrip("/"))


def unsafe_mount(src: str) -> str:
    """Why mounting ``src`` is unsafe ('' when it is not): it is, holds, or lies under a system path."""
    s = normalize_source(src)
    if not s.startswith("/"):
        return ""
    if s == "/":
        return "mounting / into a container is unsafe"
    for u in UNSAFE_MOUNT_SOURCES[1:]:
        if s == u:
            return f"mounting {s} into a container is unsafe"
        if u.startswith(s + "/"):
            return f"mounting {s} into a container is unsafe (it holds {u})"
        if u not in ("/home", "/usr") and s.startswith(u + "/"):
            return f"mounting {s} (under {u}) into a container is unsafe"
    if s.endswith("docker.sock"):
        return f"mounting {s} gives the container the Docker daemon"
    return ""


def _refused_arg(words: tuple[str, ...]) -> str:
    """The first refused word of ``docker.extra_args`` with the reason, or ''."""
    for i, w in enumerate(words):
        name, eq, value = w.partition("=")
        if not eq and i + 1 < len(words):
            value = words[i + 1]
        if name in REFUSED_FLAGS:
            return f"{w!r} is refused (set docker.network / docker.ports / docker.volumes, which are checked, or nothing)"
        if name in NAMESPACE_FLAGS and value.strip() == "host":
            return f"{w} {value if not eq else ''}".strip() + " is refused (it shares a host namespace)"
        if w.startswith("-") and not w.startswith("--"):
            for ch in w[1:]:
                if ch in SHORT_REFUSED:
                    return f"{w!r} is refused (publish and mount through docker.ports / docker.volumes)"
                if ch not in SHORT_BOOLEAN:
                    break  # a flag with a value: the rest of the word is the value
    return ""


class Docker(Engine):
    name = "docker"
    sim_flavor = "fastapi"

    def command(self, preset: Preset, host: HostSpec, facts: HostFacts, bind: str) -> Command:
        d = preset.docker
        if d is None:
            raise RenderError(f"{preset.file}: driver docker needs a docker: mapping")
        if d.network == "host" or d.network.startswith(("macvlan", "container:", "ipvlan")):
            raise RenderError(f"{preset.file}: docker.network {d.network!r} is refused (host, macvlan, ipvlan and "
                              f"container networks bypass isolation)")
        why = _refused_arg(d.extra_args)
        if why:
            raise RenderError(f"{preset.file}: docker.extra_args {why}")
        for v in d.volumes:
            why = unsafe_mount(v.split(":", 1)[0].rstrip("/") or "/")
            if why:
                raise RenderError(f"{preset.file}: docker.volumes {v!r} is refused ({why})")
        argv = ["docker", "run", "--rm", "--name", f"gpumod-{preset.id}", "--gpus", "all"]
        if d.network:
            argv += ["--network", d.network]
        ports = d.ports or (f"{bind}:{preset.port}:{preset.port}",)
        for p in ports:
            argv += ["-p", p if p.count(":") >= 2 else f"{bind}:{p}"]
        for v in d.volumes:
            argv += ["-v", v]
        for k, _ in d.environment:
            argv += ["-e", k]  # the value comes from the unit's environment file
        argv += list(d.extra_args)
        argv.append(d.image)
        argv += list(d.command)
        return Command(tuple(argv), private_env=tuple(d.environment))

    def stand_in_args(self, preset: Preset, peers: tuple[Preset, ...]) -> Command:
        return Command(Vllm().stand_in_args(preset, peers).argv)

    def probe(self, host: Host, preset: Preset, timeout: float) -> Probe:
        return http.health_probe(host, preset, timeout)


ENGINE = Docker()


def gpus_flag(argv: tuple[str, ...], devices: str) -> tuple[str, ...]:
    """``docker run --gpus all`` narrowed to the service's GPUs: ``--gpus device=<uuid>``, or for
    several ``--gpus "device=<a>,<b>"`` (docker reads the value as CSV: the quotes keep the list one field)."""
    out = list(argv)
    if "--gpus" in out:
        i = out.index("--gpus")
        out[i + 1] = f"device={devices}" if "," not in devices else f'"device={devices}"'
    return tuple(out)
