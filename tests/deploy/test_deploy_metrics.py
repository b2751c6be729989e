"""Every series the Grafana dashboard, the alert rules and the HPA's adapter rule
query is exported by a live server's /metrics (the real vLLM engine), with the
labels the queries group and match by; and the image's HEALTHCHECK command
passes against a live server and fails against a dead port."""

from __future__ import annotations

import json
import os
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MODEL_NAME, LiveServer, free_port
from tests.support.deploy import (
    COMPOSE_DIR,
    ENTRYPOINT,
    K8S_DIR,
    TARGET_LABELS,
    alert_exprs,
    dashboard_queries,
    keda_queries,
    load_yaml,
    promql_labels,
    promql_metrics,
)

pytestmark = pytest.mark.engine  # the real server's /metrics


def adapter_query(rule: dict) -> str:
    """The rule's metricsQuery as prometheus-adapter sends it for one pod."""
    query = rule["metricsQuery"]
    for var, value in (("<<.Series>>", rule["name"]["matches"].strip("^$")),
                       ("<<.LabelMatchers>>", 'namespace="lemur",pod="lemur-0"'), ("<<.GroupBy>>", "pod")):  # fmt: skip
        query = query.replace(var, value)
    return query


def queries() -> dict[str, list[str]]:
    dashboard = json.loads((COMPOSE_DIR / "grafana" / "dashboards" / "lemur.json").read_text())
    adapter = load_yaml(K8S_DIR / "prometheus-adapter-values.yaml")
    return {
        "dashboard": dashboard_queries(dashboard),
        "alerts": alert_exprs(load_yaml(COMPOSE_DIR / "prometheus" / "alerts.yml")["groups"]),
        "adapter": [q for rule in adapter["rules"]["custom"] for q in (rule["seriesQuery"], adapter_query(rule))],
        "keda": keda_queries(),
    }


@pytest.fixture(scope="module")
def exported(server: LiveServer) -> dict[str, set[str]]:
    """Sample name -> label names on a live server after some traffic, so that
    histograms and labelled counters have series."""
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        for stream in (False, True):
            r = http.post("/v1/chat/completions", json={**body, "stream": stream}, headers=server.headers())
            assert r.status_code == 200, r.text
        assert http.get("/v1/models").status_code == 401  # an error status for the error panels
        text = http.get("/metrics", headers=server.headers()).text  # all series, as on --metrics-port
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def test_every_queried_series_is_exported_with_its_labels(exported: dict[str, set[str]]) -> None:
    checked: set[str] = set()
    for source, exprs in queries().items():
        assert exprs, source
        for expr in exprs:
            metrics = promql_metrics(expr)
            if source != "alerts":  # alerts may use Prometheus' own `up`
                assert metrics, f"{source}: no lemur:/vllm: series in {expr!r}"
            missing = metrics - exported.keys()
            assert not missing, f"{source} queries {sorted(missing)}, not on /metrics: {expr!r}"
            labels = set().union(*(exported[m] for m in metrics)) | TARGET_LABELS
            unknown = promql_labels(expr) - labels
            assert not unknown, f"{source}: labels {sorted(unknown)} not on {sorted(metrics)}: {expr!r}"
            checked |= metrics
    # What the issue asks the dashboard to show, by the series behind it.
    for series in ("lemur:http_requests_total", "lemur:time_to_first_token_seconds_bucket",
                   "lemur:time_per_output_token_seconds_bucket", "lemur:e2e_request_latency_seconds_bucket",
                   "lemur:generation_tokens_total", "lemur:num_requests_waiting", "lemur:num_requests_queued",
                   "vllm:num_requests_running",
                   "vllm:kv_cache_usage_perc", "lemur:key_requests_total"):  # fmt: skip
        assert series in checked, series


def test_the_check_itself_rejects_unknown_series(exported: dict[str, set[str]]) -> None:
    # A counter is exported as <name>_total, a histogram as _bucket/_sum/_count: the bare names are not series.
    for wrong in ("lemur:http_requests", "lemur:time_to_first_token_seconds", "vllm:gpu_cache_usage_perc"):
        assert promql_metrics(f"rate({wrong}[5m])") - exported.keys() == {wrong}
    assert promql_labels('sum by (key, status) (rate(lemur:key_requests_total{model_name=~"x"}[1m]))') == {
        "key", "status", "model_name"
    }  # fmt: skip


def run_healthcheck(port: int) -> int:
    env = {**os.environ, "LEMUR_PORT": str(port)}
    return subprocess.run(["sh", str(ENTRYPOINT), "healthcheck"], env=env, capture_output=True, timeout=30).returncode


def test_the_image_healthcheck_command_probes_health(server: LiveServer) -> None:
    port = int(server.base_url.rsplit(":", 1)[1])
    assert run_healthcheck(port) == 0
    assert run_healthcheck(free_port()) != 0
