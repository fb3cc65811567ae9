"""Prometheus metrics of one server process, in their own registry (so tests and several
apps in one process never collide).

Names follow Prometheus' conventions: durations end in `_duration_seconds` (histograms, so
`_bucket`, `_sum`, `_count`), counters in `_total`, written out here as they are exposed (the
client would add it anyway) so a grep for the exposed name finds its definition.
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

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "pneumo_requests_total",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "pneumo_request_duration_seconds",
            "Request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "pneumo_queue_wait_duration_seconds",
            "Time an image waited in the batching queue",
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "pneumo_batch_size", "Images per model run", buckets=BATCH_BUCKETS, registry=r
        )
        self.predictions = Counter(
            "pneumo_predictions_total", "Predictions by label", ["label"], registry=r
        )
        self.cache = Counter(
            "pneumo_cache_lookups_total", "Result cache lookups by result", ["result"], registry=r
        )
        self.shed = Counter(
            "pneumo_shed_requests_total", "Requests refused with 503 (queue full)", registry=r
        )
        self.queue_depth = Gauge(
            "pneumo_queue_depth", "Images waiting in the batching queue", registry=r
        )
        self.model = Gauge(
            "pneumo_model_info",
            "The model version being served (value 1)",
            ["name", "version", "variant", "sha256"],
            registry=r,
        )

    def observe_batch(self, size: int, waits: list[float]) -> None:
        self.batch_size.observe(size)
        for w in waits:
            self.queue_time.observe(w)

    def serving(self, name: str, version: str, variant: str, sha256: str) -> None:
        """Mark the model now served (and only it)."""
        self.model.clear()
        self.model.labels(name, version, variant, sha256).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
