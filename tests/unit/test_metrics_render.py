"""/metrics for an endpoint picker scraping 20 times a second: the queue it
routes by is read at every scrape (lemur:num_requests_pending, the gateway's
queue plus vLLM's, and lemur:num_requests_queued), and a render of every
other series (vLLM's and the gateway's) is reused for --metrics-max-age."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from lemur.server.metrics import VLLM_WAITING, Metrics


def _value(text: bytes, name: str) -> float:
    families = text_string_to_metric_families(text.decode())
    return sum(s.value for f in families for s in f.samples if s.name == name)


@dataclass
class Engine:
    """vLLM's registry as it looks: its waiting queue per engine, and a counter."""

    registry: CollectorRegistry
    waiting: Gauge
    prompt_tokens: Counter


def _engine() -> Engine:
    r = CollectorRegistry()
    return Engine(
        r,
        Gauge(VLLM_WAITING, "Requests waiting in vLLM.", ["engine"], registry=r),
        Counter("vllm:prompt_tokens", "Prompt tokens.", ["engine"], registry=r),
    )


def test_the_queue_is_fresh_and_the_rest_reused() -> None:
    engine = _engine()
    engine.waiting.labels("0").set(3)
    engine.waiting.labels("1").set(1)
    engine.prompt_tokens.labels("0").inc(7)
    depth = [2]
    metrics = Metrics("m", max_age=3600, engine=engine.registry)
    metrics.watch_queue(lambda: depth[0])
    first = metrics.render(with_keys=False)
    assert _value(first, "lemur:num_requests_pending") == 6
    assert _value(first, "lemur:num_requests_queued") == 2
    engine.waiting.labels("0").set(0)
    engine.prompt_tokens.labels("0").inc(5)
    depth[0] = 5
    metrics.http_requests.labels("/v1/chat/completions", "POST", "200").inc()
    later = metrics.render(with_keys=False)
    assert _value(later, "lemur:num_requests_pending") == 6  # 5 + 0 + 1: read now
    assert _value(later, VLLM_WAITING) == 4 and _value(later, "vllm:prompt_tokens_total") == 7  # vLLM's: cached
    assert _value(later, "lemur:http_requests_total") == 0  # the gateway's: cached too
    names = [f.name for f in text_string_to_metric_families(later.decode())]
    assert len(names) == len(set(names)), "a family rendered twice"


def test_per_key_series_are_reused_too() -> None:
    metrics = Metrics("m", max_age=3600, engine=CollectorRegistry())
    metrics.key_requests.labels("main", "200").inc()
    assert _value(metrics.render(with_keys=True), "lemur:key_requests_total") == 1  # first rendered now ...
    metrics.key_requests.labels("main", "200").inc()
    assert _value(metrics.render(with_keys=True), "lemur:key_requests_total") == 1  # ... then reused


def test_renders_age_out() -> None:
    engine = _engine()
    engine.prompt_tokens.labels("0").inc(1)
    metrics = Metrics("m", max_age=0.0, engine=engine.registry)
    assert _value(metrics.render(with_keys=False), "vllm:prompt_tokens_total") == 1
    engine.prompt_tokens.labels("0").inc(6)
    metrics.http_requests.labels("/v1/chat/completions", "POST", "200").inc()
    later = metrics.render(with_keys=False)
    assert _value(later, "vllm:prompt_tokens_total") == 7 and _value(later, "lemur:http_requests_total") == 1


def test_without_vllm_pending_is_the_gateway_queue() -> None:
    metrics = Metrics("m", max_age=0.5, engine=CollectorRegistry())
    metrics.watch_queue(lambda: 4)
    assert _value(metrics.render(with_keys=False), "lemur:num_requests_pending") == 4
