"""Every Prometheus object of the gateway, in one registry per app, and the statistics
extension's figures (``stats``, :mod:`service.stats`), recorded beside them.

Labels stay low-cardinality: ``model``, ``task``, ``route`` (the route template, never the raw
path), ``code`` (HTTP status or gRPC code name), ``phase`` and ``reason`` (fixed sets).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .stats import InferenceStats

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stats = InferenceStats()
        r = self.registry
        self.requests = Counter(
            "sepvit_requests_total",
            "Requests answered, by route and status code.",
            ["route", "code"],
            registry=r,
        )
        self.request_latency = Histogram(
            "sepvit_request_duration_seconds",
            "Request latency from arrival to response.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # (route, code) -> labelled children of requests and request_latency
        self._answered: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self.in_flight = Gauge(
            "sepvit_in_flight_requests", "Requests being handled now.", registry=r
        )
        self.rejected = Counter(
            "sepvit_rejected_requests_total",
            "Requests refused before inference (queue_full, overloaded, not_ready).",
            ["model", "reason"],
            registry=r,
        )
        self.cancelled = Counter(
            "sepvit_cancelled_requests_total",
            "Requests dropped from the queue because the client left or the deadline passed.",
            ["model", "reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "sepvit_queue_wait_seconds",
            "Time from enqueue to the start of its batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "sepvit_queue_depth", "Images waiting in the model's queue.", ["model"], registry=r
        )
        self.batch_size = Histogram(
            "sepvit_batch_size",
            "Images per executed batch.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.phase = Histogram(
            "sepvit_phase_duration_seconds",
            "Time per batch in each pipeline phase (preprocess = decode + preprocess, "
            "inference, postprocess).",
            ["model", "phase"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            "sepvit_images_total",
            "Images answered, by model, task and outcome (ok or error).",
            ["model", "task", "outcome"],
            registry=r,
        )
        self.decode_errors = Counter(
            "sepvit_decode_errors_total",
            "Images refused by decoding (corrupt, too large, unsupported).",
            ["model"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "sepvit_event_loop_lag_seconds",
            "How late the event loop's heartbeat woke (0.1 s period).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.model_ready = Gauge(
            "sepvit_model_ready", "1 when the model takes requests.", ["model"], registry=r
        )
        self.model_runtime = Gauge(
            "sepvit_model_runtime_img_per_s",
            "The runtime serving each model (label runtime; requested: as configured, e.g. auto) "
            "and its speed measured at load by runtime auto (img/s at batch 8; 0 if not measured).",
            ["model", "runtime", "requested"],
            registry=r,
        )

    def answered(self, route: str, code: str, seconds: float) -> None:
        """A request on ``route`` was answered with ``code`` after ``seconds``."""
        children = self._answered.get((route, code))
        if children is None:  # labels() costs a lock and a few allocations: once per pair
            children = self._answered[route, code] = (
                self.requests.labels(route, code),
                self.request_latency.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
