"""The vLLM stand-in (and custom "fastapi" servers, which speak vLLM's sleep routes): one
GPU-resident model with vLLM's sleep levels, wake tags and pause modes.

As the real server (../shared/reference/servers.md): no listener until loaded; dev routes only with
VLLM_SERVER_DEV_MODE=1; a request to a sleeping engine is accepted and waits.  ``POST /sleep``
takes ``mode``: ``abort`` (the default) cuts off requests in flight (a stream ends with
``finish_reason: "abort"``), ``wait`` lets them finish before sleeping, ``keep`` freezes them until
the engine is fully awake, then they go on.  In every mode new requests wait while the engine
pauses or sleeps.  ``--vllm-version`` below 0.17 plays a server from before pause modes that
refuses the ``mode`` parameter (400), so a client's fallback can be exercised.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from typing import Any, Protocol

from .devices import split_mb
from .http import App, Request, Response
from .ledger import Ledger, OutOfMemory
from .openai import completion, embedding, log, oai_error, stream_chat
from .workers import Worker, WorkerGone

PAUSE_MODES = ("abort", "wait", "keep")


def _version(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split(".")[:2])
    except ValueError:
        return (0, 0)


class Holder(Protocol):
    """Where one rank's memory is held: this process (``devices.Charge``) or a TP worker (``workers.Worker``)."""

    pid: int

    def alloc(self, mb: int, tag: str = "", owner: str = "") -> None: ...

    def free(self, tag: str | None = None, lag_s: float | None = None) -> int: ...


#: how long vLLM's API server outlives a dead engine before its watchdog shuts it down
ENGINE_DEATH_EXIT_S = 5.0
ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."


class VllmEngine:
    """One GPU-resident model with vLLM's sleep levels and wake tags, held by one rank per GPU.

    ``--vram-mb`` (and ``--sleep-vram-mb``, the part kept while asleep) are the model's TOTAL over
    its ranks; each rank holds an even share, split as ``Preset.per_gpu_mb`` splits (rounded down,
    the remainder on rank 0), so a sleeping TP=2 model keeps half its residual on each GPU."""

    def __init__(self, args: argparse.Namespace, ranks: list[Holder], gpus: list[Ledger], name: str):
        self.args, self.ranks, self.gpus, self.name = args, ranks, gpus, name
        self.pid = os.getpid()
        total = int(args.vram_mb * getattr(args, "hold_factor", 1.0))  # what it really holds awake
        # asleep it keeps its runtime (CUDA context) at every level; what one level keeps beyond
        # the other (--sleep-l1-mb / --sleep-l2-mb) sits in a "graphs" pool freed at the other level
        kept = {lv: getattr(args, f"sleep_l{lv}_mb", None) for lv in (1, 2)}
        self.kept = {lv: min(total, args.sleep_vram_mb if mb is None else mb) for lv, mb in kept.items()}
        runtime = min(self.kept.values())
        graphs = max(self.kept.values()) - runtime
        rest = total - runtime - graphs
        weights = min(args.weights_mb if args.weights_mb is not None else int(rest * 0.6), rest)
        even = [1.0] * len(ranks)
        self.totals = split_mb(total, even)
        self.runtime_mb = split_mb(runtime, even)
        self.graphs_mb = split_mb(graphs, even)
        self.weights_mb = split_mb(weights, even)
        self.kv_mb = [t - r - g - w for t, r, g, w in zip(self.totals, self.runtime_mb, self.graphs_mb, self.weights_mb)]
        self.runtime_total, self.graphs_total = runtime, graphs
        self.cond = threading.Condition()
        self.asleep: set[str] = set()  # tags currently asleep: weights, kv_cache, scheduling
        self.level: int | None = None
        self.weights_valid = True
        self.sleeps_free = args.enable_sleep_mode  # without --enable-sleep-mode /sleep frees nothing
        self.in_flight = 0
        self.paused = False  # a sleep is under way or done: new requests wait until fully awake
        self.epoch = 0  # bumped by an abort: requests begun before it are cut off
        self.dead = False  # a TP worker died: the engine is dead (EngineDeadError), /health 503
        self.stopping = False

    def _each(self, tag: str, sizes: list[int]) -> None:
        for rank, mb in zip(self.ranks, sizes):
            rank.alloc(mb, tag, self.name)

    def _free(self, tag: str | None) -> int:
        return sum(rank.free(tag, self.args.release_lag_s) for rank in self.ranks)

    def load(self) -> None:
        time.sleep(self.args.load_s)
        for gpu, want in zip(self.gpus, self.totals):
            snap = gpu.snapshot()
            if snap.free_mb < want:
                log(f"ValueError: Free memory on device cuda:{snap.index} ({snap.free_mb / 1024:.2f}/{snap.total_mb / 1024:.2f} GiB) "
                    f"on startup is less than desired GPU memory utilization ({want / 1024:.2f} GiB).")
                raise SystemExit(1)
        try:
            self._each("runtime", self.runtime_mb)
            if self.graphs_total:
                self._each("graphs", self.graphs_mb)
            self._each("weights", self.weights_mb)
            self._each("kv_cache", self.kv_mb)
        except (OutOfMemory, WorkerGone) as exc:
            log(f"torch.OutOfMemoryError: {exc}" if isinstance(exc, OutOfMemory) else f"RuntimeError: {exc}")
            raise SystemExit(1) from exc
        per = "" if len(self.ranks) == 1 else " (" + ", ".join(f"{mb} MiB on GPU {g.snapshot().index}"
                                                               for mb, g in zip(self.totals, self.gpus)) + ")"
        log(f"Model loading took {self.args.load_s:.2f} seconds; {self.args.vram_mb} MiB on GPU{per}")

    def watch_workers(self) -> None:
        """What vLLM's MultiprocExecutor worker monitor does when a worker dies: log it, shut the
        executor down (the other workers exit and free their memory), mark the engine dead
        (``/health`` answers 503, requests fail with EngineDeadError) and, unless
        ``VLLM_KEEP_ALIVE_ON_ENGINE_DEATH`` is set, shut the API server down a few seconds later."""
        def on_death(w: Worker) -> None:
            with self.cond:
                if self.stopping or self.dead:
                    return
                self.dead = True
                self.cond.notify_all()
            log(f"ERROR [multiproc_executor.py] Worker proc {w.name} died unexpectedly, shutting down executor.")
            for other in self.ranks:
                if isinstance(other, Worker) and other is not w:
                    other.terminate()
            log(f"ERROR [core_client.py] Engine core proc died unexpectedly (worker {w.name}, pid {w.pid}); EngineDeadError")
            if not _env_true("VLLM_KEEP_ALIVE_ON_ENGINE_DEATH"):
                def bye() -> None:
                    log("Engine is dead: shutting down the API server")
                    os._exit(1)

                t = threading.Timer(ENGINE_DEATH_EXIT_S, bye)
                t.daemon = True
                t.start()

        for rank in self.ranks:
            if isinstance(rank, Worker):
                rank.watch(on_death)

    @property
    def sleeping(self) -> bool:
        return bool(self.asleep)

    def sleep(self, level: int, mode: str = "abort") -> None:
        with self.cond:
            if self.asleep:
                log("Executor is already sleeping.")
                return
            self.paused = True  # every pause mode queues new requests
            if mode == "abort":
                self.epoch += 1
                if self.in_flight:
                    log(f"Aborted {self.in_flight} in-flight requests (sleep mode=abort)")
            elif mode == "wait":
                self.cond.wait_for(lambda: self.in_flight == 0)  # drain: in-flight requests finish
            # keep: in-flight requests freeze at their next step (they wait for the wake)
            if level == 0:
                self.asleep = {"scheduling"}
            else:
                self.asleep = {"weights", "kv_cache"}
                if self.sleeps_free:
                    freed = self._free("kv_cache")
                    freed += self._free("weights")
                    if self.graphs_total and self.kept[level] == self.runtime_total:
                        freed += self._free("graphs")
                    if level == 2:
                        self.weights_valid = False
                    log(f"Sleep mode freed {freed / 1024:.2f} GiB memory")
                else:
                    log("Sleep mode freed 0.00 GiB memory")
            self.level = level
            self.cond.notify_all()

    def wake(self, tags: list[str]) -> None:
        with self.cond:
            if not self.asleep:
                log("Executor is not sleeping.")
                return
            todo = [t for t in (tags or sorted(self.asleep)) if t in self.asleep]
            for t in tags:
                if t not in self.asleep:
                    log(f"WARNING: tag {t!r} is not asleep; ignored")
        if "weights" in todo:
            time.sleep(self.args.wake_l1_s if self.level == 1 else self.args.wake_l2_s * 0.1)
            if self.sleeps_free:
                self._each("weights", self.weights_mb)
        if "kv_cache" in todo:
            if self.sleeps_free:
                self._each("kv_cache", self.kv_mb)
                if self.graphs_total and self.level is not None and self.kept[self.level] == self.runtime_total:
                    self._each("graphs", self.graphs_mb)
        with self.cond:
            self.asleep -= set(todo)
            if self.asleep == {"scheduling"} and not tags:
                self.asleep = set()
            if not self.asleep:
                self.level = None
                self.paused = False
            self.cond.notify_all()

    def reload_weights(self) -> None:
        time.sleep(self.args.wake_l2_s * 0.9)
        self.weights_valid = True

    def wait_awake(self, timeout: float = 600.0) -> bool:
        """A new request: wait until the engine is fully awake and not pausing (or dead)."""
        with self.cond:
            return self.cond.wait_for(lambda: self.dead or (not self.asleep and not self.paused), timeout)

    def begin(self) -> int:
        """A request starts running; returns the epoch that an abort would end."""
        with self.cond:
            self.in_flight += 1
            return self.epoch

    def end(self) -> None:
        with self.cond:
            self.in_flight -= 1
            self.cond.notify_all()

    def step(self, epoch: int) -> bool:
        """Between two steps of a running request: False when a sleep aborted it; blocks while a
        ``keep`` sleep froze it."""
        with self.cond:
            self.cond.wait_for(lambda: not self.asleep or self.epoch != epoch, 600)
            return self.epoch == epoch

    def shutdown(self) -> None:
        self.stopping = True
        for rank in self.ranks:
            if isinstance(rank, Worker):
                rank.stop(self.args.release_lag_s)
            else:
                rank.free(None, self.args.release_lag_s)


def _env_true(name: str) -> bool:
    try:
        return bool(int(os.environ.get(name, "0") or "0"))
    except ValueError:
        return False


def vllm_app(args: argparse.Namespace, engine: VllmEngine, served: list[str], fastapi: bool = False) -> App:
    app = App()
    dev = _dev_mode() if not fastapi else args.enable_sleep_mode
    created = int(time.time())

    @app.route("GET", "/health")
    def health(req: Request) -> Response:
        if engine.dead:  # EngineDeadError: vLLM answers 503 with an empty body
            return Response(503)
        return Response(200, None if not fastapi else {"status": "ok"})

    @app.route("GET", "/version")
    def version(req: Request) -> Response:
        return Response(200, {"version": args.vllm_version})

    @app.route("GET", "/v1/models")
    def models(req: Request) -> Response:
        data = [{
            "id": name, "object": "model", "created": created, "owned_by": "vllm", "root": args.model, "parent": None,
            "max_model_len": args.max_model_len,
            "permission": [{"id": "modelperm-" + uuid.uuid4().hex[:16], "object": "model_permission", "created": created,
                            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                            "organization": "*", "group": None, "is_blocking": False}],
        } for name in served]
        return Response(200, {"object": "list", "data": data})

    @app.route("GET", "/metrics")
    def metrics(req: Request) -> Response:
        state = "awake" if not engine.asleep else ("weights_offloaded" if engine.level == 1 else "discard_all")
        lines = ["# TYPE vllm:engine_sleep_state gauge"]
        for s in ("awake", "weights_offloaded", "discard_all"):
            lines.append(f'vllm:engine_sleep_state{{engine="0",model_name="{served[0]}",sleep_state="{s}"}} {1 if s == state else 0}')
        lines.append(f"vllm:num_requests_running{{model_name=\"{served[0]}\"}} {engine.in_flight}")
        return Response(200, "\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")

    def _check_model(body: dict[str, Any]) -> Response | None:
        m = body.get("model")
        if m is not None and m not in served:
            return oai_error(404, f"The model `{m}` does not exist. Valid aliases: {', '.join(served)}.", "NotFoundError", "model")
        return None

    def _infer(kind: str):  # type: ignore[no-untyped-def]
        def handler(req: Request) -> Response:
            try:
                body = req.json() or {}
            except json.JSONDecodeError:
                return oai_error(400, "Invalid JSON body", "BadRequestError")
            bad = _check_model(body)
            if bad:
                return bad
            # vLLM >= 0.17 queues requests while asleep: accepted, then waits until fully awake
            if not engine.wait_awake():
                return oai_error(503, "engine asleep", "ServiceUnavailableError")
            if engine.dead:
                return oai_error(500, ENGINE_DEAD_MESSAGE, "InternalServerError")
            epoch = engine.begin()
            streaming = False
            try:
                note = "" if engine.weights_valid else "<garbage weights> "
                model = body.get("model") or served[0]
                if args.infer_s:
                    time.sleep(args.infer_s)
                if not engine.step(epoch):
                    return Response(200, completion(model, body, kind == "chat", note, finish="abort"))
                if kind == "embeddings":
                    inp = body.get("input", "")
                    items = inp if isinstance(inp, list) else [inp]
                    data = [{"object": "embedding", "index": i, "embedding": embedding(str(x))} for i, x in enumerate(items)]
                    return Response(200, {"object": "list", "data": data, "model": model,
                                          "usage": {"prompt_tokens": len(items), "total_tokens": len(items)}})
                if kind == "chat" and body.get("stream"):
                    streaming = True  # in flight until the stream ends
                    return Response(200, content_type="text/event-stream",
                                    stream=stream_chat(model, body, note, args.stream_delay_s,
                                                       gate=lambda: engine.step(epoch), on_done=engine.end))
                return Response(200, completion(model, body, kind == "chat", note))
            finally:
                if not streaming:
                    engine.end()

        return handler

    app.route("POST", "/v1/chat/completions")(_infer("chat"))
    app.route("POST", "/v1/completions")(_infer("completions"))
    app.route("POST", "/v1/embeddings")(_infer("embeddings"))

    if dev:
        def _body(status: dict[str, Any]) -> Any:
            return None if args.vllm_version.startswith("0.2") and not fastapi else status

        @app.route("POST", "/sleep")
        def sleep(req: Request) -> Response:
            if engine.dead:
                return oai_error(500, ENGINE_DEAD_MESSAGE, "InternalServerError")
            raw = req.arg("level", "1")
            try:
                level = int(raw or "")
                if not 0 <= level <= 2:
                    raise ValueError
            except ValueError:
                return _bad_request(f"level: Input should be a valid integer between 0 and 2, got {raw!r}")
            mode = req.arg("mode")
            if mode is not None and _version(args.vllm_version) < (0, 17) and not fastapi:
                return _bad_request(f"mode: unexpected query parameter (this server predates pause modes), got {mode!r}")
            if mode is not None and mode not in PAUSE_MODES:
                return _bad_request(f"mode: Input should be 'abort', 'wait' or 'keep', got {mode!r}")
            engine.sleep(level, mode or "abort")
            return Response(200, _body({"status": "sleeping", "level": level}))

        @app.route("POST", "/wake_up")
        def wake(req: Request) -> Response:
            if engine.dead:
                return oai_error(500, ENGINE_DEAD_MESSAGE, "InternalServerError")
            tags = req.query.get("tags", [])  # repeatable: ?tags=weights&tags=kv_cache
            engine.wake(tags)
            return Response(200, _body({"status": "sleeping" if engine.asleep else "awake", "tags": tags or None}))

        @app.route("GET", "/is_sleeping")
        def is_sleeping(req: Request) -> Response:
            if engine.dead:  # an RPC to the dead engine core: EngineDeadError, as /sleep and /wake_up
                return oai_error(500, ENGINE_DEAD_MESSAGE, "InternalServerError")
            return Response(200, {"is_sleeping": engine.sleeping})

        @app.route("POST", "/collective_rpc")
        def rpc(req: Request) -> Response:
            try:
                body = req.json()
            except json.JSONDecodeError:
                return Response(400, {"error": "invalid JSON"})
            if not isinstance(body, dict) or "method" not in body:
                return Response(400, {"error": "missing 'method'"})
            if body["method"] == "reload_weights":
                engine.reload_weights()
                return Response(200, {"results": [None]})
            return Response(200, {"results": [str(None)]})

    return app


def _bad_request(message: str) -> Response:
    # vLLM's validation handler turns FastAPI's 422 into this 400
    return Response(400, {"error": {"message": message, "type": "Bad Request", "param": None, "code": 400}})


def _dev_mode() -> bool:
    raw = os.environ.get("VLLM_SERVER_DEV_MODE", "0")
    try:
        return bool(int(raw))
    except ValueError:  # vLLM itself raises on "true"; a stand-in refuses the same way
        log(f"ValueError: invalid literal for int() with base 10: {raw!r} (VLLM_SERVER_DEV_MODE)")
        raise SystemExit(1) from None
