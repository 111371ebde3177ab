"""File-backed VRAM ledger: one JSON file per simulated GPU.

Stdlib only: the simulator is copied as-is to an agentless box that has nothing but python3.

Every change happens under an exclusive ``flock`` on a sidecar lock file and is written with an
atomic rename, so concurrent writers (several stand-in servers, the shim) never lose or
double-count megabytes.  Allocations are keyed by pid and tag.  Freed memory is not returned at
once: it stays charged until ``release_at`` (``release_lag_s`` after the free), because real drivers
reclaim VRAM late and gpumod must poll for it.  An allocation whose process died is reclaimed the
same way, counted from when a reader first sees the process gone.

A host's GPUs are the files ``gpu0.json`` .. ``gpuN-1.json`` of its sim dir (``ensure_gpus`` makes
them match the inventory's declaration), each with a UUID from the host's name and its index
(``sim_uuid``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import sys
import time

# No dataclasses/pathlib here: the nvidia-smi shim imports this module on every call, and the
# switch engine polls the shim while waiting for VRAM release, so import time is poll latency.


class OutOfMemory(Exception):
    """Raised like torch.OutOfMemoryError when an allocation does not fit."""

    def __init__(self, gpu: int, requested_mb: int, free_mb: int, total_mb: int):
        self.gpu, self.requested_mb, self.free_mb, self.total_mb = gpu, requested_mb, free_mb, total_mb
        super().__init__(
            f"CUDA out of memory. Tried to allocate {requested_mb} MiB. GPU {gpu} has a total capacity of "
            f"{total_mb} MiB of which {free_mb} MiB is free."
        )


class LedgerInvalid(ValueError):
    """The ledger file exists but is not a ledger (truncated, hand-edited, written by something else)."""

    def __init__(self, path: str, why: str):
        self.path, self.why = path, why
        super().__init__(f"simulated GPU ledger {path}: {why} (inv sim.reset starts a new one)")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_ledger(data: object, path: str) -> dict:
    """``data`` if it has a ledger's shape; LedgerInvalid naming ``path`` otherwise."""
    if not isinstance(data, dict):
        raise LedgerInvalid(path, f"expected a JSON object, got {type(data).__name__}")
    if not _is_int(data.get("total_mb")) or data["total_mb"] < 0:
        raise LedgerInvalid(path, f"total_mb: expected a number of MB, got {data.get('total_mb')!r}")
    if not isinstance(data.get("name", ""), str):
        raise LedgerInvalid(path, "name: expected a string")
    lag = data.get("release_lag_s", 0.4)
    if isinstance(lag, bool) or not isinstance(lag, (int, float)) or not math.isfinite(lag) or lag < 0:
        raise LedgerInvalid(path, f"release_lag_s: expected seconds, got {lag!r}")
    allocs = data.get("allocs")
    if not isinstance(allocs, list):
        raise LedgerInvalid(path, f"allocs: expected a list, got {type(allocs).__name__}")
    for i, a in enumerate(allocs):
        if not isinstance(a, dict) or not _is_int(a.get("pid")) or not _is_int(a.get("mb")) or a["mb"] < 0:
            raise LedgerInvalid(path, f"allocs[{i}]: expected {{pid, mb, ...}} with whole numbers")
        rel = a.get("release_at")
        if rel is not None and (isinstance(rel, bool) or not isinstance(rel, (int, float)) or not math.isfinite(rel)):
            raise LedgerInvalid(path, f"allocs[{i}].release_at: expected a time or null, got {rel!r}")
        if not isinstance(a.get("tag", ""), str):
            raise LedgerInvalid(path, f"allocs[{i}].tag: expected a string")
    return data


class GpuSnapshot:
    __slots__ = ("index", "name", "uuid", "total_mb", "used_mb", "per_pid")

    def __init__(self, index: int, name: str, uuid: str, total_mb: int, used_mb: int, per_pid: dict[int, int]):
        self.index, self.name, self.uuid = index, name, uuid
        self.total_mb, self.used_mb, self.per_pid = total_mb, used_mb, per_pid

    @property
    def free_mb(self) -> int:
        return max(0, self.total_mb - self.used_mb)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie holds no memory: its driver context is gone
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


class _Locked:
    """``with ledger._locked() as data``: read under an exclusive flock, write back if changed."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def __enter__(self) -> dict:
        led = self.ledger
        os.makedirs(os.path.dirname(led.lock_path) or ".", exist_ok=True)
        self.fh = open(led.lock_path, "a+")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        try:
            self.data = led._read()
        except BaseException:
            self.fh.close()
            raise
        self.before = json.dumps(self.data, sort_keys=True)
        return self.data

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is None and json.dumps(self.data, sort_keys=True) != self.before:
                self.ledger._write(self.data)
        finally:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


class Ledger:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self.lock_path = self.path + ".lock"

    # -- file handling ---------------------------------------------------
    def _locked(self) -> _Locked:
        return _Locked(self)

    def _read(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"no simulated GPU ledger at {self.path} (run: inv sim.up)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerInvalid(self.path, f"cannot be read ({exc})") from None
        if not text.strip():
            raise LedgerInvalid(self.path, "the file is empty")
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise LedgerInvalid(self.path, f"truncated or not JSON ({exc})") from None
        except RecursionError:
            raise LedgerInvalid(self.path, "not a ledger (nested too deeply)") from None
        return check_ledger(data, self.path)

    def _write(self, data: dict) -> None:
        d, name = os.path.split(self.path)
        tmp = os.path.join(d, f".{name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    @staticmethod
    def create(path: str | os.PathLike[str], *, name: str, total_mb: int, index: int = 0, release_lag_s: float = 0.4,
               uuid: str = "") -> Ledger:
        """Create the GPU (idempotent: an existing ledger keeps its allocations).

        A ledger that is not one (truncated by a full disk, edited by hand) is kept beside as
        ``<path>.corrupt`` and a new one started, and stderr says so: the allocations it held are
        no longer counted, which only a restart of the stand-ins (``inv sim.reset``) puts right."""
        led = Ledger(path)
        os.makedirs(os.path.dirname(led.lock_path) or ".", exist_ok=True)
        with open(led.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    data = led._read()
                except FileNotFoundError:
                    data = {"allocs": []}
                except LedgerInvalid as exc:
                    kept = led.path + ".corrupt"
                    os.replace(led.path, kept)
                    sys.stderr.write(f"warning: {exc.path}: {exc.why}; kept as {kept} and started empty: VRAM held by "
                                     "running stand-ins is no longer counted (inv sim.reset restarts them)\n")
                    data = {"allocs": []}
                data.update(name=name, total_mb=int(total_mb), index=index, release_lag_s=float(release_lag_s))
                if uuid:
                    data["uuid"] = uuid
                data.setdefault("uuid", sim_uuid("", index))  # no host given: still shaped like a real one
                led._write(data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return led

    # -- accounting --------------------------------------------------------
    @staticmethod
    def _settle(data: dict, now: float) -> None:
        """Drop allocations whose release time has passed; start the lag for dead owners."""
        lag = float(data.get("release_lag_s", 0.4))
        keep = []
        for a in data["allocs"]:
            if a.get("release_at") is not None:
                if a["release_at"] <= now:
                    continue
            elif not pid_alive(int(a["pid"])):
                a["release_at"] = now + lag
            keep.append(a)
        data["allocs"] = keep

    @staticmethod
    def _used(data: dict) -> int:
        return sum(int(a["mb"]) for a in data["allocs"])

    def alloc(self, pid: int, mb: int, tag: str = "", owner: str = "") -> None:
        now = time.time()
        with self._locked() as data:
            self._settle(data, now)
            free = int(data["total_mb"]) - self._used(data)
            if mb > free:
                raise OutOfMemory(int(data.get("index", 0)), mb, max(0, free), int(data["total_mb"]))
            data["allocs"].append({"pid": pid, "mb": int(mb), "tag": tag, "owner": owner, "since": now, "release_at": None})

    def free(self, pid: int, tag: str | None = None, lag_s: float | None = None) -> int:
        """Mark a pid's allocations (all, or one tag) as freed; they leave the ledger after the lag."""
        now = time.time()
        n = 0
        with self._locked() as data:
            lag = float(data.get("release_lag_s", 0.4)) if lag_s is None else lag_s
            for a in data["allocs"]:
                if a["pid"] == pid and a.get("release_at") is None and (tag is None or a["tag"] == tag):
                    a["release_at"] = now + lag
                    n += int(a["mb"])
            self._settle(data, now)
        return n

    def held(self, pid: int, tag: str | None = None) -> int:
        """MB a pid currently holds and has not freed (optionally one tag)."""
        data = self._read()
        return sum(int(a["mb"]) for a in data["allocs"] if a["pid"] == pid and a.get("release_at") is None and (tag is None or a["tag"] == tag))

    def snapshot(self) -> GpuSnapshot:
        now = time.time()
        with self._locked() as data:
            self._settle(data, now)
            per: dict[int, int] = {}
            for a in data["allocs"]:
                per[int(a["pid"])] = per.get(int(a["pid"]), 0) + int(a["mb"])
            return GpuSnapshot(
                index=int(data.get("index", 0)),
                name=str(data["name"]),
                uuid=str(data.get("uuid", "")),
                total_mb=int(data["total_mb"]),
                used_mb=self._used(data),
                per_pid=per,
            )

    def meta(self) -> tuple[int, str, str]:
        """(index, uuid, name) of this GPU, read without settling (cheap: no lock, no write)."""
        data = self._read()
        return int(data.get("index", 0)), str(data.get("uuid", "")), str(data["name"])

    def live_mb(self) -> dict[int, int]:
        """MB held per pid by allocations not freed and whose process still lives."""
        out: dict[int, int] = {}
        for a in self._read()["allocs"]:
            if a.get("release_at") is None and pid_alive(int(a["pid"])):
                out[int(a["pid"])] = out.get(int(a["pid"]), 0) + int(a["mb"])
        return out

    def reset(self) -> None:
        with self._locked() as data:
            data["allocs"] = []


def sim_uuid(host: str, index: int) -> str:
    """The UUID of a simulated host's GPU ``index``: the same host name and index always give the
    same UUID (so a pin by UUID holds across set-ups), in the shape of a real one
    (``GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx``)."""
    h = hashlib.sha256(f"gpumod-sim\0{host}\0{index}".encode()).hexdigest()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def ledger_file(sim_dir: str | os.PathLike[str], index: int) -> str:
    return os.path.join(os.fspath(sim_dir), f"gpu{index}.json")


class GpuStillHeld(Exception):
    """A declared GPU was removed from the inventory while a running process still holds memory on it."""

    def __init__(self, path: str, held: dict[int, int]):
        self.path, self.held = path, held
        who = ", ".join(f"pid {p} ({mb} MB)" for p, mb in sorted(held.items()))
        super().__init__(f"simulated GPU {path} is no longer declared but still holds {sum(held.values())} MB ({who}): "
                         "stop its services first, or run sim.reset")


def ensure_gpus(sim_dir: str | os.PathLike[str], gpus: list[dict]) -> list[str]:
    """Make the sim dir's ledgers match ``gpus`` (each ``{name, total_mb, uuid, release_lag_s}``, in
    index order); what changed, one line each.

    A ledger whose declaration is unchanged is not touched; a changed name, size or lag is updated
    in place and keeps its allocations (running stand-ins stay counted); a GPU no longer declared is
    removed only when no live process holds memory on it, else GpuStillHeld (nothing is removed)."""
    sim_dir = os.fspath(sim_dir)
    changed: list[str] = []
    extra = [led for led in ledgers(sim_dir) if _file_index(led.path) >= len(gpus)]
    for led in extra:
        try:
            held = led.live_mb()
        except (OSError, ValueError):
            held = {}
        if held:
            raise GpuStillHeld(led.path, held)
    for i, g in enumerate(gpus):
        path = ledger_file(sim_dir, i)
        want = (str(g["name"]), int(g["total_mb"]), float(g["release_lag_s"]), str(g["uuid"]), i)
        try:
            with open(path, encoding="utf-8") as fh:
                d = json.load(fh)
            have = (d.get("name"), d.get("total_mb"), d.get("release_lag_s"), d.get("uuid"), d.get("index"))
        except (OSError, ValueError, AttributeError):
            have = None
        if have != want:
            led = Ledger.create(path, name=want[0], total_mb=want[1], release_lag_s=want[2], uuid=want[3], index=i)
            line = f"simulated GPU {i}: {want[0]} ({want[1]} MB, {want[3]})"
            used = Ledger._used(led._read())
            if used > want[1]:  # kept: the running stand-ins hold it; it frees as they stop
                line += f"; it holds {used} MB, more than its new total, until its services stop"
                sys.stderr.write(f"warning: {line}\n")
            changed.append(line)
    for led in extra:
        for f in (led.path, led.lock_path):
            try:
                os.remove(f)
            except FileNotFoundError:
                pass
        changed.append(f"simulated GPU {_file_index(led.path)} removed (no longer declared)")
    return changed


def _file_index(path: str) -> int:
    return int("".join(c for c in os.path.basename(path) if c.isdigit()) or 0)


def ledgers(sim_dir: str | os.PathLike[str]) -> list[Ledger]:
    """Every simulated GPU in a sim dir, in index order (files gpu0.json, gpu1.json, ...)."""
    try:
        names = [n for n in os.listdir(sim_dir) if n.startswith("gpu") and n.endswith(".json")]
    except OSError:
        return []
    names.sort(key=_file_index)
    return [Ledger(os.path.join(sim_dir, n)) for n in names]
