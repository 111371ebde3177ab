"""vLLM's tensor-parallel workers, simulated: one child process per rank, each holding its rank's
share of the model on its GPU, as real vLLM's multiprocessing executor runs one ``VllmWorker``
process per GPU (its own pid, a child of the server, in the same cgroup).

The server drives each worker over a pipe (one JSON line per request, one per answer): ``alloc``
and ``free`` a tag on the worker's GPU.  A worker that loses its server (the pipe closes) or gets
SIGTERM frees what it holds (after the release lag) and exits; one that is killed leaves its
memory to the ledger's dead-owner reclaim, after the same lag.  The server watches every worker:
when one dies, it does what vLLM's ``MultiprocExecutor`` worker monitor does (see ``vllm.py``).
Stdlib only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from .ledger import Ledger, OutOfMemory


class WorkerGone(Exception):
    """The worker process is not there to answer (it died, or is being shut down)."""


class Worker:
    """The server's handle on one rank's worker process."""

    def __init__(self, rank: int, ledger: Ledger, owner: str, lag_s: float | None):
        self.rank, self.ledger_path, self.owner = rank, ledger.path, owner
        pkg = __name__.rsplit(".", 1)[0]
        root = os.path.dirname(os.path.abspath(__file__))
        for _ in pkg.split("."):
            root = os.path.dirname(root)
        code = f"import sys; sys.path.insert(0, {root!r}); from {pkg}.workers import worker_main; sys.exit(worker_main(sys.argv[1:]))"
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-c", code, ledger.path, str(rank), owner, "" if lag_s is None else repr(lag_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.pid = self.proc.pid
        self.lock = threading.Lock()
        self.name = f"VllmWorker-{rank}"

    def _call(self, **req: Any) -> dict[str, Any]:
        with self.lock:
            return self._call_locked(req)

    def _call_locked(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.proc.poll() is not None or self.proc.stdin is None or self.proc.stdout is None:
            raise WorkerGone(f"{self.name} (pid {self.pid}) is gone")
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise WorkerGone(f"{self.name} (pid {self.pid}) is gone: {exc}") from None
        if not line:
            raise WorkerGone(f"{self.name} (pid {self.pid}) is gone")
        return json.loads(line)

    def alloc(self, mb: int, tag: str = "", owner: str = "") -> None:
        r = self._call(op="alloc", mb=int(mb), tag=tag)
        if not r.get("ok"):
            e = r.get("oom") or {}
            raise OutOfMemory(int(e.get("gpu", 0)), int(e.get("requested_mb", mb)), int(e.get("free_mb", 0)),
                              int(e.get("total_mb", 0)))

    def free(self, tag: str | None = None, lag_s: float | None = None) -> int:
        try:
            return int(self._call(op="free", tag=tag, lag_s=lag_s).get("mb", 0))
        except WorkerGone:
            return 0

    def watch(self, on_death: Callable[[Worker], None]) -> None:
        """Call ``on_death(self)`` from a thread when the process exits (it is reaped then)."""
        def wait() -> None:
            self.proc.wait()
            on_death(self)

        threading.Thread(target=wait, daemon=True, name=f"monitor-{self.name}").start()

    def stop(self, lag_s: float | None = None) -> None:
        """Free what it holds, then let it exit (its pipe closes).  Called from a signal handler
        too, possibly while this thread is mid-request: then the worker is sent SIGTERM instead
        (it frees on SIGTERM as well)."""
        if not self.lock.acquire(timeout=1.0):
            self.terminate()
            return
        try:
            try:
                self._call_locked({"op": "free", "tag": None, "lag_s": lag_s})
            except WorkerGone:
                pass
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            self.terminate()
        finally:
            self.lock.release()

    def terminate(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.terminate()
            except ProcessLookupError:
                pass


def worker_main(argv: list[str]) -> int:
    """The worker process: ``LEDGER RANK OWNER LAG``; requests on stdin, answers on stdout."""
    path, owner, lag = argv[0], argv[2], argv[3]  # argv[1]: the rank, for ps
    lag_s = float(lag) if lag else None
    led = Ledger(path)
    pid = os.getpid()

    def bye(signum: int = 0, frame: Any = None) -> None:
        try:
            led.free(pid, None, lag_s)
        finally:
            os._exit(0)

    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the server, which stops its workers
    for line in sys.stdin:
        req = json.loads(line)
        out: dict[str, Any] = {"ok": True}
        try:
            if req["op"] == "alloc":
                led.alloc(pid, int(req["mb"]), str(req["tag"]), owner)
            elif req["op"] == "free":
                req_lag = req.get("lag_s")
                out["mb"] = led.free(pid, req.get("tag"), lag_s if req_lag is None else float(req_lag))
        except OutOfMemory as exc:
            out = {"ok": False, "oom": {"gpu": exc.gpu, "requested_mb": exc.requested_mb,
                                        "free_mb": exc.free_mb, "total_mb": exc.total_mb}}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    bye()
    return 0
