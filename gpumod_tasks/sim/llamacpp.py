"""The llama.cpp stand-ins: ``llama-server`` in router mode (models loaded on demand, ``--models-max``
with least-recently-used eviction) and with a single model.

As the real server (../shared/reference/servers.md): the router listens at once, answers
``/models/load`` at spawn and evicts the least recently used idle model at ``--models-max``; a
single-model server listens at once and answers 503 "Loading model" until loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from .devices import Charge
from .http import App, Request, Response
from .ledger import OutOfMemory
from .openai import completion, embedding, log, stream_chat


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
    def __init__(self, args: argparse.Namespace, charge: Charge):
        # every model's child inherits the router's environment and split: one charge for all
        self.args, self.charge = args, charge
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
            self.charge.alloc(m.vram_mb, m.name, m.name)
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
                self.charge.free(m.name, self.args.release_lag_s)
            m.ready.set()

    def _unload(self, m: RouterModel, wait: bool) -> None:
        def reap() -> None:
            time.sleep(0.05)  # the child exits after being asked over stdin
            with self.lock:
                self.charge.free(m.name, self.args.release_lag_s)
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
        self.charge.free(None, self.args.release_lag_s)


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
                                                                                     "embedding": embedding(str(body.get("input")))}]})
                if kind == "chat" and body.get("stream"):
                    return Response(200, content_type="text/event-stream", stream=stream_chat(name, body, "", args.stream_delay_s))
                return Response(200, completion(name, body, kind == "chat"))
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
                return Response(200, content_type="text/event-stream", stream=stream_chat(name, body, "", args.stream_delay_s))
            return Response(200, completion(name, body, kind == "chat"))

        return handler

    app.route("POST", "/v1/chat/completions")(_infer("chat"))
    app.route("POST", "/v1/completions")(_infer("completions"))
    return app


def single_llama_loader(args: argparse.Namespace, charge: Charge, state: dict[str, Any]) -> None:
    """Load the single model in the background (the server listens meanwhile), like llama-server;
    one process, its memory split over its GPUs by the charge's ratios (``--tensor-split``)."""

    def loader() -> None:
        time.sleep(args.load_s)
        try:
            charge.alloc(args.vram_mb, "model", args.alias or args.model)
        except OutOfMemory as exc:
            log(f"ggml_backend_cuda_buffer_type_alloc_buffer: allocating failed: {exc}")
            os._exit(1)
        state["loaded"] = True
        log("main: model loaded")

    threading.Thread(target=loader, daemon=True).start()
