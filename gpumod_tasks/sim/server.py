"""Stand-in inference servers that speak the real vLLM / llama.cpp / custom-server HTTP APIs and
charge the simulated VRAM ledger.

    python -m gpumod_tasks.sim.server --flavor vllm --port 8010 --model Qwen/Qwen3-Embedding-0.6B \
        --served-model-name vllm-embedding-code --vram-mb 2500 --enable-sleep-mode   # + VLLM_SERVER_DEV_MODE=1
    python -m gpumod_tasks.sim.server --flavor llamacpp --port 7070 --models-dir DIR --models-max 1
    python -m gpumod_tasks.sim.server --flavor fastapi --port 8030 --vram-mb 4500 --enable-sleep-mode

Behaviour follows ../shared/reference/servers.md (read from the servers' source): vLLM binds its
port but does not listen until the engine is loaded; its dev routes exist only with
VLLM_SERVER_DEV_MODE=1; a request to a sleeping engine is accepted and waits; the llama.cpp
router listens at once, answers /models/load at spawn and evicts the least recently used idle
model at --models-max.  Stdlib only (it runs on agentless boxes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from .http import App, Request, Response, bind, serve
from .ledger import Ledger, OutOfMemory, ledgers


def log(msg: str) -> None:
    sys.stderr.write(time.strftime("%H:%M:%S ") + msg + "\n")
    sys.stderr.flush()


def _ledger(args: argparse.Namespace) -> Ledger:
    sim_dir = args.sim_dir or os.environ.get("GPUMOD_SIM_DIR", "")
    leds = ledgers(sim_dir) if sim_dir else []
    if not leds:
        log("ERROR: no simulated GPU found (GPUMOD_SIM_DIR / --sim-dir); run: inv sim.up")
        raise SystemExit(1)
    idx = int((os.environ.get("CUDA_VISIBLE_DEVICES") or str(args.gpu)).split(",")[0] or 0)
    return leds[min(idx, len(leds) - 1)]


def _words(text: str, n: int = 6) -> str:
    return " ".join(text.split()[:n])


def _last_user_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        for m in reversed(body.get("messages") or []):
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                return c if isinstance(c, str) else json.dumps(c)
        return ""
    p = body.get("prompt", "")
    return p if isinstance(p, str) else json.dumps(p)


def _embedding(text: str, dims: int = 8) -> list[float]:
    h = hashlib.sha256(text.encode()).digest()
    return [round((b - 128) / 128, 4) for b in h[:dims]]


def _completion(model: str, body: dict[str, Any], chat: bool, note: str = "") -> dict[str, Any]:
    text = f"{note}[{model}] {_words(_last_user_text(body)) or 'hello'}"
    usage = {"prompt_tokens": len(_last_user_text(body).split()), "completion_tokens": len(text.split())}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model, "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": text, "finish_reason": "stop"}
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": [choice], "usage": usage}


def _stream_chat(model: str, body: dict[str, Any], note: str = "", delay: float = 0.0):  # type: ignore[no-untyped-def]
    text = f"{note}[{model}] {_words(_last_user_text(body)) or 'hello'}"
    cid = "chatcmpl-" + uuid.uuid4().hex[:16]
    created = int(time.time())
    first = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    yield b"data: " + json.dumps(first).encode() + b"\n\n"
    for word in text.split(" "):
        if delay:
            time.sleep(delay)
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
        yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
    last = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield b"data: " + json.dumps(last).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def _oai_error(status: int, message: str, type_: str, param: str | None = None) -> Response:
    return Response(status, {"error": {"message": message, "type": type_, "param": param, "code": status}})


# ---------------------------------------------------------------------------------------------
# vLLM (and the vLLM-compatible sleep API of custom "fastapi" servers)
# ---------------------------------------------------------------------------------------------


class Engine:
    """One GPU-resident model with vLLM's sleep levels and wake tags."""

    def __init__(self, args: argparse.Namespace, ledger: Ledger, name: str):
        self.args, self.ledger, self.name = args, ledger, name
        self.pid = os.getpid()
        total = args.vram_mb
        self.runtime_mb = min(args.sleep_vram_mb, total)
        rest = total - self.runtime_mb
        self.weights_mb = min(args.weights_mb if args.weights_mb is not None else int(rest * 0.6), rest)
        self.kv_mb = rest - self.weights_mb
        self.cond = threading.Condition()
        self.asleep: set[str] = set()  # tags currently asleep: weights, kv_cache, scheduling
        self.level: int | None = None
        self.weights_valid = True
        self.sleeps_free = args.enable_sleep_mode  # without --enable-sleep-mode /sleep frees nothing
        self.in_flight = 0

    def load(self) -> None:
        time.sleep(self.args.load_s)
        snap = self.ledger.snapshot()
        if snap.free_mb < self.args.vram_mb:
            log(f"ValueError: Free memory on device ({snap.free_mb / 1024:.2f}/{snap.total_mb / 1024:.2f} GiB) on startup "
                f"is less than desired GPU memory utilization ({self.args.vram_mb / 1024:.2f} GiB).")
            raise SystemExit(1)
        try:
            self.ledger.alloc(self.pid, self.runtime_mb, "runtime", self.name)
            self.ledger.alloc(self.pid, self.weights_mb, "weights", self.name)
            self.ledger.alloc(self.pid, self.kv_mb, "kv_cache", self.name)
        except OutOfMemory as exc:
            log(f"torch.OutOfMemoryError: {exc}")
            raise SystemExit(1) from exc
        log(f"Model loading took {self.args.load_s:.2f} seconds; {self.args.vram_mb} MiB on GPU")

    @property
    def sleeping(self) -> bool:
        return bool(self.asleep)

    def sleep(self, level: int) -> None:
        with self.cond:
            if self.asleep:
                log("Executor is already sleeping.")
                return
            if level == 0:
                self.asleep = {"scheduling"}
            else:
                self.asleep = {"weights", "kv_cache"}
                if self.sleeps_free:
                    freed = self.ledger.free(self.pid, "kv_cache", self.args.release_lag_s)
                    freed += self.ledger.free(self.pid, "weights", self.args.release_lag_s)
                    if level == 2:
                        self.weights_valid = False
                    log(f"Sleep mode freed {freed / 1024:.2f} GiB memory")
                else:
                    log("Sleep mode freed 0.00 GiB memory")
            self.level = level

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
                self.ledger.alloc(self.pid, self.weights_mb, "weights", self.name)
        if "kv_cache" in todo:
            if self.sleeps_free:
                self.ledger.alloc(self.pid, self.kv_mb, "kv_cache", self.name)
        with self.cond:
            self.asleep -= set(todo)
            if self.asleep == {"scheduling"} and not tags:
                self.asleep = set()
            if not self.asleep:
                self.level = None
            self.cond.notify_all()

    def reload_weights(self) -> None:
        time.sleep(self.args.wake_l2_s * 0.9)
        self.weights_valid = True

    def wait_awake(self, timeout: float = 600.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: not self.asleep, timeout)

    def shutdown(self) -> None:
        self.ledger.free(self.pid, None, self.args.release_lag_s)


def vllm_app(args: argparse.Namespace, engine: Engine, served: list[str], fastapi: bool = False) -> App:
    app = App()
    dev = _dev_mode() if not fastapi else args.enable_sleep_mode
    created = int(time.time())

    @app.route("GET", "/health")
    def health(req: Request) -> Response:
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
            return _oai_error(404, f"The model `{m}` does not exist. Valid aliases: {', '.join(served)}.", "NotFoundError", "model")
        return None

    def _infer(kind: str):  # type: ignore[no-untyped-def]
        def handler(req: Request) -> Response:
            try:
                body = req.json() or {}
            except json.JSONDecodeError:
                return _oai_error(400, "Invalid JSON body", "BadRequestError")
            bad = _check_model(body)
            if bad:
                return bad
            # vLLM >= 0.17 queues requests while asleep: accepted, then waits until fully awake
            if not engine.wait_awake():
                return _oai_error(503, "engine asleep", "ServiceUnavailableError")
            engine.in_flight += 1
            try:
                note = "" if engine.weights_valid else "<garbage weights> "
                model = body.get("model") or served[0]
                if args.infer_s:
                    time.sleep(args.infer_s)
                if kind == "embeddings":
                    inp = body.get("input", "")
                    items = inp if isinstance(inp, list) else [inp]
                    data = [{"object": "embedding", "index": i, "embedding": _embedding(str(x))} for i, x in enumerate(items)]
                    return Response(200, {"object": "list", "data": data, "model": model,
                                          "usage": {"prompt_tokens": len(items), "total_tokens": len(items)}})
                if kind == "chat" and body.get("stream"):
                    return Response(200, content_type="text/event-stream", stream=_stream_chat(model, body, note, args.stream_delay_s))
                return Response(200, _completion(model, body, kind == "chat", note))
            finally:
                engine.in_flight -= 1

        return handler

    app.route("POST", "/v1/chat/completions")(_infer("chat"))
    app.route("POST", "/v1/completions")(_infer("completions"))
    app.route("POST", "/v1/embeddings")(_infer("embeddings"))

    if dev:
        def _body(status: dict[str, Any]) -> Any:
            return None if args.vllm_version.startswith("0.2") and not fastapi else status

        @app.route("POST", "/sleep")
        def sleep(req: Request) -> Response:
            raw = req.arg("level", "1")
            try:
                level = int(raw or "")
                if not 0 <= level <= 2:
                    raise ValueError
            except ValueError:
                return Response(400, {"error": {"message": f"level: Input should be a valid integer between 0 and 2, got {raw!r}",
                                                "type": "Bad Request", "param": None, "code": 400}})
            engine.sleep(level)
            return Response(200, _body({"status": "sleeping", "level": level}))

        @app.route("POST", "/wake_up")
        def wake(req: Request) -> Response:
            tags = req.query.get("tags", [])  # repeatable: ?tags=weights&tags=kv_cache
            engine.wake(tags)
            return Response(200, _body({"status": "sleeping" if engine.asleep else "awake", "tags": tags or None}))

        @app.route("GET", "/is_sleeping")
        def is_sleeping(req: Request) -> Response:
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


def _dev_mode() -> bool:
    raw = os.environ.get("VLLM_SERVER_DEV_MODE", "0")
    try:
        return bool(int(raw))
    except ValueError:  # vLLM itself raises on "true"; a stand-in refuses the same way
        log(f"ValueError: invalid literal for int() with base 10: {raw!r} (VLLM_SERVER_DEV_MODE)")
        raise SystemExit(1) from None


# ---------------------------------------------------------------------------------------------
# llama.cpp: router mode (models loaded on demand, --models-max with LRU) and single-model mode
# ---------------------------------------------------------------------------------------------


class RouterModel:
    def __init__(self, name: str, vram_mb: int, source: str, args_: list[str], preset: str = ""):
        self.name, self.vram_mb, self.source, self.argv, self.preset = name, vram_mb, source, args_, preset
        self.status = "unloaded"
        self.failed = False
        self.exit_code = 0
        self.last_used = 0.0
        self.in_flight = 0
        self.ready = threading.Event()


class Router:
    def __init__(self, args: argparse.Namespace, ledger: Ledger):
        self.args, self.ledger = args, ledger
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.models: dict[str, RouterModel] = {}
        self.models_max = args.models_max
        for name, mb, path in self._discover():
            # as the real router shows a child's argv: router-only flags stripped, host/port/alias/model set
            argv = ["llama-server", "--host", "127.0.0.1", "--port", "0", "--alias", name, "--model", path]
            self.models[name] = RouterModel(name, mb, "models_dir", argv, preset=f"[{name}]\nmodel = {path}\n\n")
        for spec in args.sim_model or []:
            name, _, mb = spec.partition("=")
            self.models[name] = RouterModel(name, int(mb or 0), "preset", ["llama-server", "--alias", name])

    def _discover(self) -> list[tuple[str, int, str]]:
        out = []
        d = self.args.models_dir
        if d and Path(d).is_dir():
            for p in sorted(Path(d).iterdir()):
                if p.is_file() and p.suffix == ".gguf" and "mmproj" not in p.name:
                    out.append((p.stem, _gguf_vram(p), str(p)))
                elif p.is_dir():
                    files = sorted(f for f in p.glob("*.gguf") if "mmproj" not in f.name)
                    if files:
                        main = next((f for f in files if "-00001-of-" in f.name), files[0])
                        out.append((p.name, sum(_gguf_vram(f) for f in files), str(main)))
        return out

    def running(self) -> list[RouterModel]:
        return [m for m in self.models.values() if m.status in ("loading", "loaded", "sleeping")]

    def load(self, name: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            m = self.models.get(name)
            if m is None:
                return 404, _llama_err(404, "model is not found", "not_found_error")
            if m.status in ("loading", "loaded", "sleeping"):
                return 400, _llama_err(400, "model is already running", "invalid_request_error")
            if self.models_max and len(self.running()) >= self.models_max:
                victims = [v for v in self.running() if v.status in ("loaded", "sleeping") and v.in_flight == 0]
                if not victims:
                    return 500, _llama_err(500, "model limit reached, try again later", "server_error")
                victim = min(victims, key=lambda v: v.last_used)
                log(f"unloading least recently used model {victim.name}")
                self._unload(victim, wait=True)
            m.status, m.failed, m.exit_code = "loading", False, 0
            m.ready.clear()
            threading.Thread(target=self._child_load, args=(m,), daemon=True).start()
            return 200, {"success": True}

    def _child_load(self, m: RouterModel) -> None:
        time.sleep(self.args.load_s)
        try:
            self.ledger.alloc(self.pid, m.vram_mb, m.name, m.name)
        except OutOfMemory as exc:
            log(f"model {m.name} failed to load: {exc}")
            with self.lock:
                m.status, m.failed, m.exit_code = "unloaded", True, 1
                m.ready.set()
            return
        with self.lock:
            if m.status == "loading":
                m.status = "loaded"
                m.last_used = time.time()
            else:  # unloaded while loading: force-killed
                self.ledger.free(self.pid, m.name, self.args.release_lag_s)
            m.ready.set()

    def _unload(self, m: RouterModel, wait: bool) -> None:
        def reap() -> None:
            time.sleep(0.05)  # the child exits after being asked over stdin
            with self.lock:
                self.ledger.free(self.pid, m.name, self.args.release_lag_s)
                m.status = "unloaded"
                m.ready.set()

        if m.status == "loading":
            m.status = "unloaded"  # force-killed at once
            m.ready.set()
            return
        if wait:
            reap()
        else:
            threading.Thread(target=reap, daemon=True).start()

    def unload(self, name: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            m = self.models.get(name)
            if m is None:
                return 400, _llama_err(400, "model is not found", "invalid_request_error")
            if m.status not in ("loading", "loaded", "sleeping"):
                return 400, _llama_err(400, "model is not running", "invalid_request_error")
            self._unload(m, wait=False)
            return 200, {"success": True}

    def entry(self, m: RouterModel) -> dict[str, Any]:
        status: dict[str, Any] = {"value": m.status, "args": m.argv}
        if m.preset:
            status["preset"] = m.preset
        if m.failed:
            status["failed"] = True
            status["exit_code"] = m.exit_code
        e: dict[str, Any] = {"id": m.name, "aliases": [], "tags": [], "object": "model", "owned_by": "llamacpp",
                             "created": int(time.time()), "status": status,
                             "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
                             "source": m.source, "can_remove": False}
        return e

    def shutdown(self) -> None:
        self.ledger.free(self.pid, None, self.args.release_lag_s)


def _gguf_vram(p: Path) -> int:
    return max(1, int(p.stat().st_size * 1.2 / 2**20) + 64)


def _llama_err(code: int, message: str, type_: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "type": type_}}


def router_app(args: argparse.Namespace, router: Router) -> App:
    app = App()
    app.not_found = lambda req: Response(404, _llama_err(404, "File Not Found", "not_found_error"))

    @app.route("GET", "/health")
    def health(req: Request) -> Response:
        return Response(200, {"status": "ok"})

    def list_models(req: Request) -> Response:
        with router.lock:
            data = [router.entry(m) for m in router.models.values()]
        return Response(200, {"data": data, "object": "list"})

    app.route("GET", "/models")(list_models)
    app.route("GET", "/v1/models")(list_models)

    @app.route("GET", "/props")
    def props(req: Request) -> Response:
        return Response(200, {"role": "router", "max_instances": router.models_max, "models_autoload": not args.no_models_autoload})

    def _name(req: Request) -> str | None:
        body = req.json() or {}
        return body.get("model") if isinstance(body, dict) else None

    def _parse_error(exc: json.JSONDecodeError) -> Response:
        # the real router lets nlohmann's parse error escape: 500 server_error, not 400
        return Response(500, _llama_err(500, f"[json.exception.parse_error.101] parse error: {exc}", "server_error"))

    @app.route("POST", "/models/load")
    def load(req: Request) -> Response:
        try:
            name = _name(req)
        except json.JSONDecodeError as exc:
            return _parse_error(exc)
        if not name:
            return Response(404, _llama_err(404, "model is not found", "not_found_error"))
        code, body = router.load(name)
        return Response(code, body)

    @app.route("POST", "/models/unload")
    def unload(req: Request) -> Response:
        try:
            name = _name(req)
        except json.JSONDecodeError as exc:
            return _parse_error(exc)
        code, body = router.unload(name or "")
        return Response(code, body)

    def _infer(kind: str):  # type: ignore[no-untyped-def]
        def handler(req: Request) -> Response:
            try:
                body = req.json() or {}
            except json.JSONDecodeError as exc:
                return Response(400, _llama_err(400, f"JSON parse error: {exc}", "invalid_request_error"))
            name = body.get("model") if isinstance(body, dict) else None
            if not name:
                return Response(400, _llama_err(400, "model name is missing from the request", "invalid_request_error"))
            m = router.models.get(name)
            if m is None:
                return Response(400, _llama_err(400, f"model '{name}' not found", "invalid_request_error"))
            autoload = req.arg("autoload")
            auto = (not args.no_models_autoload) if autoload is None else autoload in ("1", "true")
            if m.status not in ("loaded", "sleeping"):
                if not auto and m.status != "loading":
                    return Response(400, _llama_err(400, "model is not loaded", "invalid_request_error"))
                if m.status != "loading":
                    code, err = router.load(name)
                    if code != 200 and m.status != "loading":
                        return Response(code, err)
                m.ready.wait(timeout=600)
                if m.status != "loaded":
                    return Response(500, _llama_err(500, f"model name={name} failed to load", "server_error"))
            m.in_flight += 1
            m.last_used = time.time()
            try:
                if args.infer_s:
                    time.sleep(args.infer_s)
                if kind == "embeddings":
                    return Response(200, {"object": "list", "model": name, "data": [{"object": "embedding", "index": 0,
                                                                                     "embedding": _embedding(str(body.get("input")))}]})
                if kind == "chat" and body.get("stream"):
                    return Response(200, content_type="text/event-stream", stream=_stream_chat(name, body, "", args.stream_delay_s))
                return Response(200, _completion(name, body, kind == "chat"))
            finally:
                m.in_flight -= 1

        return handler

    app.route("POST", "/v1/chat/completions")(_infer("chat"))
    app.route("POST", "/chat/completions")(_infer("chat"))
    app.route("POST", "/v1/completions")(_infer("completions"))
    app.route("POST", "/v1/embeddings")(_infer("embeddings"))
    return app


def single_llama_app(args: argparse.Namespace, state: dict[str, Any]) -> App:
    """llama-server with one model: listens at once, 503 "Loading model" until loaded."""
    app = App()
    name = args.alias or Path(args.model or "model").stem

    @app.route("GET", "/health")
    def health(req: Request) -> Response:
        if not state["loaded"]:
            return Response(503, {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}})
        return Response(200, {"status": "ok"})

    @app.route("GET", "/v1/models")
    def models(req: Request) -> Response:
        return Response(200, {"object": "list", "data": [{"id": name, "object": "model", "created": int(time.time()), "owned_by": "llamacpp"}]})

    def _infer(kind: str):  # type: ignore[no-untyped-def]
        def handler(req: Request) -> Response:
            if not state["loaded"]:
                return Response(503, {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}})
            body = req.json() or {}
            if kind == "chat" and body.get("stream"):
                return Response(200, content_type="text/event-stream", stream=_stream_chat(name, body, "", args.stream_delay_s))
            return Response(200, _completion(name, body, kind == "chat"))

        return handler

    app.route("POST", "/v1/chat/completions")(_infer("chat"))
    app.route("POST", "/v1/completions")(_infer("completions"))
    return app


# ---------------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpumod-sim-server", description=__doc__.split("\n\n")[0])
    p.add_argument("--flavor", choices=("vllm", "llamacpp", "fastapi"), required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sim-dir", default="")
    p.add_argument("--gpu", type=int, default=0)
    p.add_argument("--load-s", type=float, default=1.5)
    p.add_argument("--wake-l1-s", type=float, default=0.3)
    p.add_argument("--wake-l2-s", type=float, default=0.8)
    p.add_argument("--release-lag-s", type=float, default=None)
    p.add_argument("--infer-s", type=float, default=0.0, help="extra time per inference request")
    p.add_argument("--stream-delay-s", type=float, default=0.0, help="pause between streamed chunks")
    p.add_argument("--vram-mb", type=int, default=0)
    p.add_argument("--sleep-vram-mb", type=int, default=512)
    p.add_argument("--weights-mb", type=int, default=None)
    # vLLM's own flags
    p.add_argument("--model", "-m", default="")
    p.add_argument("--served-model-name", nargs="*", default=None)
    p.add_argument("--enable-sleep-mode", action="store_true")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--gpu-memory-utilization", type=float, default=None)
    p.add_argument("--vllm-version", default="0.33.0")
    # llama.cpp router flags
    p.add_argument("--models-dir", default="")
    p.add_argument("--models-max", type=int, default=4)
    p.add_argument("--models-preset", default="")
    p.add_argument("--no-models-autoload", action="store_true")
    p.add_argument("--alias", "-a", default="")
    p.add_argument("--sim-model", action="append", help="NAME=MB: a router model and the VRAM it takes when loaded")
    args, unknown = p.parse_known_args(argv)
    if unknown and args.flavor != "llamacpp":
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    ledger = _ledger(args)
    if args.vram_mb == 0 and args.gpu_memory_utilization:
        # like vLLM: a fraction of the device's total memory
        args.vram_mb = int(ledger.snapshot().total_mb * args.gpu_memory_utilization)
    stop = threading.Event()
    cleanup: list[Any] = []

    def on_term(signum: int, frame: Any) -> None:
        for fn in cleanup:
            fn()
        log(f"shutting down (signal {signum})")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    if args.flavor in ("vllm", "fastapi"):
        served = args.served_model_name or [args.model or "model"]
        engine = Engine(args, ledger, served[0])
        srv = bind(vllm_app(args, engine, served, fastapi=args.flavor == "fastapi"), args.host, args.port)
        cleanup.append(engine.shutdown)
        log(f"{args.flavor} stand-in: loading {served[0]} ({args.vram_mb} MiB) on port {args.port}")
        engine.load()  # no listener until loaded, like vLLM (connection refused while loading)
        log("Application startup complete.")
        serve(srv, stop)
    elif args.models_dir or args.sim_model or args.models_preset or not args.model:
        router = Router(args, ledger)
        cleanup.append(router.shutdown)
        srv = bind(router_app(args, router), args.host, args.port)
        log(f"llama.cpp router stand-in on port {args.port}: {len(router.models)} models, models-max {args.models_max}")
        serve(srv, stop)
    else:
        state = {"loaded": False}
        srv = bind(single_llama_app(args, state), args.host, args.port)
        pid = os.getpid()
        cleanup.append(lambda: ledger.free(pid, None, args.release_lag_s))

        def loader() -> None:
            time.sleep(args.load_s)
            try:
                ledger.alloc(pid, args.vram_mb, "model", args.alias or args.model)
            except OutOfMemory as exc:
                log(f"ggml_backend_cuda_buffer_type_alloc_buffer: allocating failed: {exc}")
                os._exit(1)
            state["loaded"] = True
            log("main: model loaded")

        threading.Thread(target=loader, daemon=True).start()
        serve(srv, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
