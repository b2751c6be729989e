"""/metrics for an endpoint picker scraping 20 times a second: a render of
the series (vLLM's and the gateway's) is reused for --metrics-max-age, while
lemur:num_requests_pending (the gateway's queue plus vLLM's) and
lemur:num_requests_queued are read at every scrape."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families

from lemur.server.metrics import VLLM_WAITING, Metrics


def _value(text: bytes, name: str) -> float:
    families = text_string_to_metric_families(text.decode())
    return sum(s.value for f in families for s in f.samples if s.name == name)


def _engine() -> tuple[CollectorRegistry, Gauge]:
    """vLLM's registry as it looks: its waiting queue per engine."""
    registry = CollectorRegistry()
    return registry, Gauge(VLLM_WAITING, "Requests waiting in vLLM.", ["engine"], registry=registry)


def test_pending_is_the_gateway_queue_plus_vllms_and_always_fresh() -> None:
    registry, waiting = _engine()
    waiting.labels("0").set(3)
    waiting.labels("1").set(1)
    depth = [2]
    metrics = Metrics("m", max_age=3600, engine=registry)
    metrics.watch_queue(lambda: depth[0])
    first = metrics.render(with_keys=False)
    assert _value(first, "lemur:num_requests_pending") == 6
    assert _value(first, "lemur:num_requests_queued") == 2
    waiting.labels("0").set(0)
    depth[0] = 5
    later = metrics.render(with_keys=False)
    assert _value(later, "lemur:num_requests_pending") == 6  # 5 + 0 + 1: read now
    assert _value(later, VLLM_WAITING) == 4  # vLLM's series: the cached render
    metrics.http_requests.labels("/v1/chat/completions", "POST", "200").inc()
    assert _value(metrics.render(with_keys=False), "lemur:http_requests_total") == 0  # the gateway's: cached too
    metrics.key_requests.labels("main", "200").inc()
    assert _value(metrics.render(with_keys=True), "lemur:key_requests_total") == 1  # first rendered now ...
    metrics.key_requests.labels("main", "200").inc()
    assert _value(metrics.render(with_keys=True), "lemur:key_requests_total") == 1  # ... then reused


def test_renders_age_out() -> None:
    registry, waiting = _engine()
    waiting.labels("0").set(1)
    metrics = Metrics("m", max_age=0.0, engine=registry)
    assert _value(metrics.render(with_keys=False), VLLM_WAITING) == 1
    waiting.labels("0").set(7)
    metrics.http_requests.labels("/v1/chat/completions", "POST", "200").inc()
    later = metrics.render(with_keys=False)
    assert _value(later, VLLM_WAITING) == 7 and _value(later, "lemur:http_requests_total") == 1


def test_without_vllm_pending_is_the_gateway_queue() -> None:
    metrics = Metrics("m", max_age=0.5, engine=CollectorRegistry())
    metrics.watch_queue(lambda: 4)
    assert _value(metrics.render(with_keys=False), "lemur:num_requests_pending") == 4
