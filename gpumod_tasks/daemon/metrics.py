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
        self.vram_used = Gauge("gpumod_vram_used_mb", "GPU memory used (MB), summed over every GPU", registry=r)
        self.vram_total = Gauge("gpumod_vram_total_mb", "GPU memory total (MB), summed over every GPU", registry=r)
        self.gpu_used = Gauge("gpumod_gpu_used_mb", "GPU memory used (MB), by GPU index", ["gpu"], registry=r)
        self.gpu_total = Gauge("gpumod_gpu_total_mb", "GPU memory total (MB), by GPU index", ["gpu"], registry=r)
        self.gpu_free = Gauge("gpumod_gpu_free_mb", "GPU memory free (MB), by GPU index", ["gpu"], registry=r)
        self.gpu_other = Gauge("gpumod_gpu_other_mb", "GPU memory of processes gpumod does not run (MB), by GPU index",
                               ["gpu"], registry=r)
        self.service_vram = Gauge("gpumod_service_vram_mb", "GPU memory a service holds (MB), by service id and GPU index",
                                  ["service", "gpu"], registry=r)
        self._gpu_labels: set[str] = set()
        self._service_labels: set[tuple[str, str]] = set()
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
        from ..gpu_use import gpu_uses

        uses = gpu_uses(seen)
        if uses:
            self.vram_used.set(sum(u.used_mb for u in uses))
            self.vram_total.set(sum(u.total_mb for u in uses))
            gpus, held = set(), set()
            for u in uses:
                g = str(u.index)
                gpus.add(g)
                self.gpu_used.labels(g).set(u.used_mb)
                self.gpu_total.labels(g).set(u.total_mb)
                self.gpu_free.labels(g).set(u.free_mb)
                self.gpu_other.labels(g).set(u.other_mb)
                for sid, mb in u.services.items():
                    held.add((sid, g))
                    self.service_vram.labels(sid, g).set(mb)
            # a series for a GPU that is gone, or a service that left a GPU, ends (not stuck at its last value)
            for g in self._gpu_labels - gpus:
                for gauge in (self.gpu_used, self.gpu_total, self.gpu_free, self.gpu_other):
                    gauge.remove(g)
            for sid, g in self._service_labels - held:
                self.service_vram.remove(sid, g)
            self._gpu_labels, self._service_labels = gpus, held
        for sid in seen.services:
            now = mgr.state_of(sid)
            for st in STATES:
                self.state.labels(sid, st).set(1 if st == now else 0)

    def render(self, mgr: Any) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        for sid, n in mgr.in_flight.items():
            self.in_flight.labels(sid).set(n)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
