"""Loaded by LiteLLM's proxy (``litellm_settings.callbacks`` in the config gpumod writes, this file
copied beside it): when gpumod rewrites the config, hand its ``model_list`` to the running router.

LiteLLM's model-management API (/model/new, /model/update, /model/delete) needs its database;
this keeps the proxy database-free. It only uses LiteLLM's and the standard library's modules:
it runs in LiteLLM's interpreter, which need not have gpumod installed."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from litellm.integrations.custom_logger import CustomLogger  # type: ignore[import-not-found]

log = logging.getLogger("gpumod.fleet")
POLL_S = 0.25


class FleetReload(CustomLogger):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.stamp = self._stamp()
        self.reloads = 0
        try:
            asyncio.get_running_loop().create_task(self._watch())
        except RuntimeError:  # loaded outside the proxy's loop: a thread does the same
            threading.Thread(target=self._watch_thread, daemon=True, name="gpumod-fleet-reload").start()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _check(self) -> None:
        stamp = self._stamp()
        if stamp is None or stamp == self.stamp:
            return
        self.stamp = stamp
        import yaml  # type: ignore[import-untyped]

        try:
            with open(self.path) as fh:
                cfg = yaml.safe_load(fh) or {}
            model_list = cfg.get("model_list") or []
            from litellm.proxy import proxy_server  # type: ignore[import-not-found]

            router = proxy_server.llm_router
            if router is None:
                return
            router.set_model_list(model_list)
            proxy_server.llm_model_list = router.get_model_list()
            self.reloads += 1
            log.warning("gpumod fleet: model_list reloaded from %s (%d deployments)", self.path, len(model_list))
        except Exception:
            log.exception("gpumod fleet: could not reload %s", self.path)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            self._check()

    def _watch_thread(self) -> None:
        import time

        while True:
            time.sleep(POLL_S)
            self._check()


hook = FleetReload(os.environ.get("GPUMOD_FLEET_CONFIG") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "litellm.yaml"))
