"""Prometheus metrics of the server, in their own registry (so tests and several apps in one
process never collide).

Several processes serve one port with `--workers N` (and one node's Ray Serve replicas): each
then writes its values to files in a folder they share (prometheus-client's multiprocess mode,
chosen by PROMETHEUS_MULTIPROC_DIR when the process starts), and whichever answers a scrape adds
up all of them, so every scrape counts every request.

Names follow Prometheus' conventions: durations end in `_duration_seconds` (histograms, so
`_bucket`, `_sum`, `_count`), counters in `_total`, written out here as they are exposed (the
client would add it anyway) so a grep for the exposed name finds its definition.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Read by prometheus-client when it is first imported: set it before a process starts.
SHARED_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        shared = os.environ.get(SHARED_DIR_ENV)
        self.shared_dir = Path(shared) if shared else None
        if self.shared_dir is not None:  # a node of a Ray cluster may not have it yet
            self.shared_dir.mkdir(parents=True, exist_ok=True)
        self._served: set[tuple[str, str, str, str]] = set()  # pneumo_model_info's labels
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
            "pneumo_queue_depth",
            "Images waiting in the batching queue",
            registry=r,
            multiprocess_mode="livesum",  # of the processes alive
        )
        # Children of the labelled metrics by their labels (`labels` takes a lock and checks
        # every value, each call); none is ever removed.
        self._answered: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._cache_results = {True: self.cache.labels("hit"), False: self.cache.labels("miss")}
        self._labels: dict[str, Counter] = {}
        self.model = Gauge(
            "pneumo_model_info",
            "The model version being served (value 1)",
            ["name", "version", "variant", "sha256"],
            registry=r,
            multiprocess_mode="livemax",  # 1 while any live process serves it
        )

    def answered(self, route: str, status: str, seconds: float) -> None:
        """One request answered (HTTP or gRPC): its count and its latency, by route."""
        key = (route, status)
        children = self._answered.get(key)
        if children is None:  # routes and statuses are few: each pair is looked up once
            children = self._answered[key] = (
                self.requests.labels(route, status),
                self.latency.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def looked_up(self, hit: bool) -> None:
        """One lookup in the result cache."""
        self._cache_results[hit].inc()

    def predicted(self, label: str) -> None:
        """One prediction of `label`."""
        child = self._labels.get(label)
        if child is None:
            child = self._labels[label] = self.predictions.labels(label)
        child.inc()

    def observe_batch(self, size: int, waits: list[float]) -> None:
        self.batch_size.observe(size)
        for w in waits:
            self.queue_time.observe(w)

    def serving(self, models: Iterable[tuple[str, str, str, str]]) -> None:
        """Mark the models served now, by (name, version, variant, sha256), and only them."""
        now = set(models)
        for labels in self._served - now:  # a shared folder keeps old values: zero them first
            self.model.labels(*labels).set(0)
        self.model.clear()
        self._served = now
        for labels in now:
            self.model.labels(*labels).set(1)

    def render(self) -> bytes:
        """The exposition: this process's, or every process's added up."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        everyone = CollectorRegistry()
        multiprocess.MultiProcessCollector(everyone, path=str(self.shared_dir))
        return generate_latest(everyone)

    def close(self) -> None:
        """This process stops: its live gauges leave the sums."""
        if self.shared_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), path=str(self.shared_dir))


@contextlib.contextmanager
def shared_metrics_dir() -> Iterator[Path]:
    """A fresh folder for the metrics of the processes started inside (named to them by the
    environment they inherit), removed afterwards: a restart counts from zero, as one process
    does."""
    folder = Path(tempfile.mkdtemp(prefix="pneumo-metrics-"))
    previous = os.environ.get(SHARED_DIR_ENV)
    os.environ[SHARED_DIR_ENV] = str(folder)
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop(SHARED_DIR_ENV, None)
        else:
            os.environ[SHARED_DIR_ENV] = previous
        shutil.rmtree(folder, ignore_errors=True)
