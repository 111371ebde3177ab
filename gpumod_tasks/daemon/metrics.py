"""Prometheus metrics of the router daemon (prometheus_client, one registry per daemon)."""

from __future__ import annotations

from typing import Any

STATES = ("active", "sleeping", "stopped", "switching", "error")


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("gpumod_requests_total", "Requests routed, by service id ('-': no known model named) and HTTP status", ["model", "code"], registry=r)
        self.errors = Counter("gpumod_request_errors_total", "Requests answered with an error, by service id ('-': no known model named) and reason",
                              ["model", "reason"], registry=r)
        self.queue_depth = Gauge("gpumod_queue_depth", "Requests waiting for their model to become ready", ["model"], registry=r)
        self.in_flight = Gauge("gpumod_in_flight", "Requests being served, by model", ["model"], registry=r)
        buckets = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
        self.wake_seconds = Histogram("gpumod_wake_seconds", "Time to wake or start one service", ["service"],
                                      buckets=buckets, registry=r)
        self.switch_seconds = Histogram("gpumod_switch_seconds", "Time of a mode switch", ["mode"], buckets=buckets, registry=r)
        self.vram_used = Gauge("gpumod_vram_used_mb", "GPU memory used (MB)", registry=r)
        self.vram_total = Gauge("gpumod_vram_total_mb", "GPU memory total (MB)", registry=r)
        self._req_children: dict[tuple[str, int], Any] = {}
        self.state = Gauge("gpumod_service_state", "1 for the service's current state", ["service", "state"], registry=r)

    def request(self, model: str, code: int) -> None:
        key = (model, code)
        child = self._req_children.get(key)
        if child is None:  # labels() takes a lock and builds a key each time: keep the children
            child = self._req_children[key] = self.requests.labels(model, str(code))
        child.inc()

    def error(self, model: str, reason: str) -> None:
        self.errors.labels(model, reason).inc()

    def queue(self, model: str, depth: int) -> None:
        self.queue_depth.labels(model).set(depth)

    def wake(self, service: str, seconds: float) -> None:
        self.wake_seconds.labels(service).observe(seconds)

    def switch(self, mode: str, seconds: float) -> None:
        self.switch_seconds.labels(mode).observe(seconds)

    def observed(self, mgr: Any, seen: Any) -> None:
        if seen.gpu and seen.gpu.gpus:
            self.vram_used.set(seen.gpu.primary.used_mb or 0)
            self.vram_total.set(seen.gpu.primary.total_mb or 0)
        for sid in seen.services:
            now = mgr.state_of(sid)
            for st in STATES:
                self.state.labels(sid, st).set(1 if st == now else 0)

    def render(self, mgr: Any) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        for sid, n in mgr.in_flight.items():
            self.in_flight.labels(sid).set(n)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
