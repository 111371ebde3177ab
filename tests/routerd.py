"""The router daemon run inside a test: uvicorn in a thread, the real app, real HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import httpx
from conftest import free_ports


@dataclass
class Daemon:
    url: str
    server: object
    thread: threading.Thread
    manager: object

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, trust_env=False, **kw)

    def post(self, path: str, body: dict, **kw) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=60, trust_env=False, **kw)

    def chat(self, model: str, **kw) -> httpx.Response:
        return self.post("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]}, **kw)

    def chats_at_once(self, model: str, n: int) -> list[httpx.Response]:
        """``n`` chat requests for ``model`` sent concurrently."""
        async def burst():
            async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                return await asyncio.gather(*[c.post(self.url + "/v1/chat/completions", json=body) for _ in range(n)])

        return asyncio.run(burst())

    def states(self) -> dict[str, str]:
        return {m["id"]: m["state"] for m in self.get("/models").json()["models"]}

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def start_daemon(host: str | None = None, **opts) -> Daemon:
    """The daemon's app under uvicorn in a thread of the test, for inventory host ``host``."""
    import uvicorn
    from invoke import Context

    from gpumod_tasks.cli_context import catalog, inventory, open_target
    from gpumod_tasks.daemon.app import Limits, create_app, server_config
    from gpumod_tasks.daemon.metrics import Metrics
    from gpumod_tasks.daemon.model_manager import ModelManager, Options
    from gpumod_tasks.webguard import Guard

    api_key = opts.pop("api_key", None)
    allowed_hosts = tuple(opts.pop("allowed_hosts", ()))
    limits = Limits(**opts.pop("limits", {}))
    spec = inventory().resolve(host)[0]
    metrics = Metrics()
    mgr = ModelManager(lambda: open_target(Context(), spec), catalog, Options(**opts), metrics)
    app = create_app(mgr, metrics, guard=Guard(bind="127.0.0.1", allowed_hosts=allowed_hosts, token=api_key), limits=limits)
    port = free_ports(1)[0]
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, limits))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert th.is_alive() and time.monotonic() < deadline, "daemon did not start"
        time.sleep(0.02)
    return Daemon(f"http://127.0.0.1:{port}", server, th, mgr)
