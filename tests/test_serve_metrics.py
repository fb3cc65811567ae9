"""Prometheus names follow Prometheus' conventions, so dashboards and alerts written from its
documentation work: durations in `_duration_seconds`, counters exposed with `_total`."""

from __future__ import annotations

from pneumo_onnx.engine.serve.metrics import ServerMetrics

SUFFIXES = ("total", "created")
EXPECTED = {
    "pneumo_requests_total",
    "pneumo_request_duration_seconds",
    "pneumo_queue_wait_duration_seconds",
    "pneumo_batch_size",
    "pneumo_predictions_total",
    "pneumo_cache_lookups_total",
    "pneumo_shed_requests_total",
    "pneumo_queue_depth",
    "pneumo_model_info",
}


def test_metric_names_follow_the_conventions() -> None:
    metrics = ServerMetrics()
    metrics.requests.labels("/predict", "200").inc()
    metrics.cache.labels("hit").inc()
    families = {m.name: m for m in metrics.registry.collect()}
    exposed = set()
    for family in families.values():
        if family.type == "counter":  # the client exposes a counter `name` as `name_total`
            assert {s.name for s in family.samples} <= {f"{family.name}_{x}" for x in SUFFIXES}
            exposed.add(f"{family.name}_total")
        else:
            exposed.add(family.name)
        if family.type == "histogram" and family.name.endswith("_seconds"):
            assert family.name.endswith("_duration_seconds"), family.name
    assert exposed == EXPECTED
    text = metrics.render().decode()
    assert 'pneumo_requests_total{route="/predict",status="200"} 1.0' in text
    assert 'pneumo_cache_lookups_total{result="hit"} 1.0' in text
