"""Prometheus metrics under the `lemur:` prefix, modelled on vLLM's `vllm:` names.

Each app owns a registry (several apps can live in one test process); /metrics
exports it together with the process-wide default registry, where vLLM's own
engine metrics (`vllm:num_requests_running`, KV-cache use, ...) live.

An endpoint picker (the Gateway API Inference Extension's) scrapes every
replica 20 times a second. Rendering every series costs ~4 ms (vLLM's 2.5,
the gateway's histograms most of the rest), so a render is reused for
`max_age` seconds (1 s by default: Prometheus scrapes every 15 s). The
queue depth the picker routes by is always fresh:
`lemur:num_requests_pending`, the gateway's admission queue plus vLLM's
waiting queue (requests in the first are invisible to vLLM's own
`vllm:num_requests_waiting`), with `lemur:num_requests_queued`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
    start_http_server,
)
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


VLLM_WAITING = "vllm:num_requests_waiting"


class Metrics:
    def __init__(self, model_name: str, max_age: float = 0.0, engine: CollectorRegistry = REGISTRY) -> None:
        """`engine`: where vLLM's series live (the process default registry);
        `max_age`: seconds a render of any series but the live ones may be reused."""
        self.engine, self.max_age = engine, max_age
        self._renders: dict[int, tuple[float, bytes]] = {}  # id(registry) -> (when, text)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        labels = ["model_name"]
        self.model_name = model_name
        self.http_requests = Counter(
            "lemur:http_requests",
            "HTTP requests by route and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_success = Counter(
            "lemur:request_success",
            "Finished generation requests by finish reason.",
            [*labels, "finished_reason"],
            registry=r,
        )
        self.ttft = Histogram(
            "lemur:time_to_first_token_seconds",
            "Time from arrival to the first output token.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "lemur:time_per_output_token_seconds",
            "Mean time per output token after the first.",
            labels,
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "lemur:e2e_request_latency_seconds",
            "Time from arrival to the last output token.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("lemur:prompt_tokens", "Prompt tokens processed.", labels, registry=r)
        self.generation_tokens = Counter("lemur:generation_tokens", "Output tokens generated.", labels, registry=r)
        self.running = Gauge("lemur:num_requests_running", "Requests producing tokens.", labels, registry=r)
        self.waiting = Gauge(
            "lemur:num_requests_waiting", "Requests waiting for their first token.", labels, registry=r
        )
        # Requests the gateway holds before they reach the engine (--max-concurrent-requests
        # reached): invisible to vLLM's own queue, so autoscalers need it too.
        # What a picker reads at every scrape: rendered fresh, apart from the rest.
        self.live = CollectorRegistry(auto_describe=True)
        self.queued = Gauge(
            "lemur:num_requests_queued", "Requests queued in the gateway for a slot.", registry=self.live
        )
        self.pending = Gauge(
            "lemur:num_requests_pending",
            "Requests not started on this replica: the gateway's admission queue plus vLLM's waiting queue.",
            registry=self.live,
        )
        self.slow_clients = Counter(
            "lemur:slow_clients",
            "Streams cut because the client stopped reading (--stream-write-timeout).",
            registry=r,
        )
        # By API key name: shown only to a caller with a key, or on --metrics-port.
        self.key_registry = CollectorRegistry(auto_describe=True)
        k = self.key_registry
        self.key_requests = Counter(
            "lemur:key_requests", "HTTP requests by API key name and status.", ["key", "status"], registry=k
        )
        self.key_tokens = Counter(
            "lemur:key_tokens", "Prompt and generated tokens by API key name.", ["key", "kind"], registry=k
        )

        # Agent traffic: what kind of output was asked for, and what it cost to prepare.
        self.structured_requests = Counter(
            "lemur:chat_output_kind",
            "Chat requests by response_format type and tool_choice kind.",
            ["response_format", "tool_choice"],
            registry=r,
        )
        self.grammar_seconds = Histogram(
            "lemur:grammar_build_seconds",
            "Time to check a request's schemas and build its grammar (cached conversions are fast).",
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
            registry=r,
        )
        self.tool_calls = Counter("lemur:tool_calls", "Tool calls in replies.", labels, registry=r)
        self.grammar_cache_bytes = Gauge(
            "lemur:grammar_cache_bytes", "Bytes of converted schemas kept for reuse (--grammar-cache-mb).", registry=r
        )
        # LoRA adapters (model_name above is then the adapter's name for its requests).
        self.adapter_load_seconds = Histogram(
            "lemur:lora_adapter_load_seconds",
            "Time to check and load a LoRA adapter into the engine.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.adapters_loaded = Gauge("lemur:lora_adapters", "LoRA adapters served beside the base.", registry=r)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, remembered: labels() takes microseconds and
        runs for every request and every streamed chunk. Label values here come
        from small fixed sets (routes, statuses, key names, finish reasons)."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def watch_grammar_cache(self, size: Callable[[], int]) -> None:
        self.grammar_cache_bytes.set_function(lambda: float(size()))

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """`lemur:num_requests_queued` reads the admission queue's depth at each
        scrape, and `lemur:num_requests_pending` adds vLLM's waiting queue."""
        self.queued.set_function(lambda: float(depth()))
        self.pending.set_function(lambda: float(depth()) + self.engine_waiting())

    def engine_waiting(self) -> float:
        """vLLM's `vllm:num_requests_waiting` over its engines; 0 without vLLM."""
        families = self.engine.restricted_registry([VLLM_WAITING]).collect()
        return sum(sample.value for family in families for sample in family.samples if sample.name == VLLM_WAITING)

    def track(self, prompt_tokens: int, key: str = "anonymous", model: str | None = None) -> RequestTracker:
        """`model`: the base's name (default) or an adapter's, the `model_name` label."""
        return RequestTracker(self, prompt_tokens, key, model or self.model_name)

    def render(self, with_keys: bool) -> bytes:
        """Everything, with the per-key series only if `with_keys`: an open
        /metrics would otherwise name every key and its traffic to anyone.
        The live gauges are read now; the rest is at most `max_age` seconds old."""
        keys = self._reused(self.key_registry) if with_keys else b""
        return generate_latest(self.live) + self._reused(self.registry) + keys + self._reused(self.engine)

    def _reused(self, registry: CollectorRegistry) -> bytes:
        now = time.monotonic()
        cached = self._renders.get(id(registry))
        if cached is None or now - cached[0] >= self.max_age:
            cached = self._renders[id(registry)] = (now, generate_latest(registry))
        return cached[1]

    def serve_apart(self, host: str, port: int) -> None:
        """/metrics on a listener of its own (a daemon thread), for the
        operator's network: all series, the per-key ones too, all fresh."""
        start_http_server(port, addr=host, registry=_All((self.live, self.registry, self.key_registry), self.engine))


class _All(Collector):
    """The gateway's registries and vLLM's (the process default) as one."""

    def __init__(self, ours: tuple[CollectorRegistry, ...], engine: CollectorRegistry) -> None:
        self.ours, self.engine = ours, engine

    def collect(self) -> Iterable[Metric]:
        for registry in self.ours:
            yield from registry.collect()
        yield from self.engine.collect()


@dataclass
class RequestTracker:
    """Follows one engine request: waiting -> running -> finished."""

    metrics: Metrics
    prompt_tokens: int
    key: str = "anonymous"
    model: str = ""
    start: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    last_token_at: float | None = None
    tokens: int = 0
    done: bool = False

    def __post_init__(self) -> None:
        m = self.metrics
        m.child(m.waiting, self.model).inc()
        m.child(m.prompt_tokens, self.model).inc(self.prompt_tokens)
        m.child(m.key_tokens, self.key, "prompt").inc(self.prompt_tokens)

    def on_tokens(self, count: int) -> None:
        if count <= 0:
            return
        now = time.perf_counter()
        m = self.metrics
        if self.first_token_at is None:
            self.first_token_at = now
            m.child(m.ttft, self.model).observe(now - self.start)
            m.child(m.waiting, self.model).dec()
            m.child(m.running, self.model).inc()
        self.last_token_at = now
        self.tokens += count
        m.child(m.generation_tokens, self.model).inc(count)

    def finish(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        m = self.metrics
        if self.first_token_at is None:
            m.child(m.waiting, self.model).dec()
        else:
            m.child(m.running, self.model).dec()
            assert self.last_token_at is not None
            m.child(m.e2e, self.model).observe(self.last_token_at - self.start)
            if self.tokens > 1:
                m.child(m.tpot, self.model).observe((self.last_token_at - self.first_token_at) / (self.tokens - 1))
        m.child(m.request_success, self.model, reason).inc()
        m.child(m.key_tokens, self.key, "generation").inc(self.tokens)
