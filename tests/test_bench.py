"""`lemur bench` against the real server, against errors, and the mock engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main as bench_main
from bench.client import RequestResult
from bench.report import Slo, percentile, summarize, timeline
from tests.conftest import MODEL_NAME, start_server, stop_server

FIGURES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")


def test_percentile_matches_numpy() -> None:
    values = [float(x) for x in np.random.default_rng(0).exponential(size=101)]
    for p in (50, 90, 95, 99):
        assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)))


def test_timeline_and_goodput() -> None:
    rs = [
        RequestResult(0.0, 2.0, 200, ttft=0.1, output_tokens=10),
        RequestResult(0.5, 1.5, 200, ttft=0.5, output_tokens=4),
        RequestResult(1.0, 1.2, 429, error="429:rate_limit_exceeded"),
    ]
    tl = timeline(rs, 2.0)
    assert tl["output_tokens_per_s"] == [0.0, 14.0]
    assert tl["concurrency"][0] == pytest.approx(1.5) and tl["concurrency"][1] == pytest.approx(1.7)
    s = summarize(rs, 2.0, Slo(ttft_ms=200), cpu_s=0.1)
    assert s["sent"] == 3 and s["completed"] == 2 and s["failed"] == 1
    assert s["errors"] == {"429:rate_limit_exceeded": 1}
    assert s["goodput"]["fraction"] == pytest.approx(1 / 3)


@pytest.mark.e2e
def test_bench_against_the_real_server(server, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run.json"
    args = ["--base-url", server.url("/v1"), "--api-key", server.api_key, "--concurrency", "4",
            "--num-requests", "24", "--input-len", "32", "--output-len", "16", "--ignore-eos",
            "--slo-ttft-ms", "5000", "--out", str(out), "--quiet"]  # fmt: skip
    assert bench_main(args) == 0
    report = json.loads(out.read_text())
    s = report["summary"]
    assert s["sent"] == 24 and s["completed"] + s["failed"] == s["sent"] and s["completed"] == 24
    assert s["total_output_tokens"] == 24 * 16  # usage from the server, ignore_eos fixes lengths
    for name in FIGURES:
        assert set(s[name]) == {"mean", "p50", "p90", "p95", "p99"}
        assert all(v is not None and v >= 0 for v in s[name].values())
    assert s["ttft_ms"]["p50"] <= s["e2e_ms"]["p50"]
    assert s["request_throughput"] > 0 and s["output_token_throughput"] > 0
    assert 0 <= s["client_cpu_percent"] and s["goodput"]["fraction"] == 1.0
    assert report["config"]["model"] == MODEL_NAME and report["config"]["tokenizer_used"] is False
    assert (tmp_path / "run-latency-cdf.png").stat().st_size > 1000
    assert (tmp_path / "run-throughput.png").stat().st_size > 1000
    # Poisson arrivals with a duration bound; completions endpoint; compare.
    out2 = tmp_path / "poisson.json"
    args2 = ["--base-url", server.url("/v1"), "--api-key", server.api_key, "--request-rate", "20",
             "--num-requests", "20", "--endpoint", "completions", "--output-len", "8", "--out", str(out2),
             "--no-plots", "--quiet"]  # fmt: skip
    assert bench_main(args2) == 0
    s2 = json.loads(out2.read_text())["summary"]
    assert s2["completed"] + s2["failed"] == s2["sent"] == 20
    capsys.readouterr()
    assert bench_main(["compare", str(out), str(out2)]) == 0
    table = capsys.readouterr().out
    assert "request_throughput" in table and "ttft_ms.p50" in table


@pytest.mark.e2e
def test_bench_counts_errors_by_status(server, tmp_path: Path) -> None:
    out = tmp_path / "errors.json"
    args = ["--base-url", server.url("/v1"), "--api-key", "wrong-key", "--model", MODEL_NAME,
            "--concurrency", "4", "--num-requests", "12", "--out", str(out), "--no-plots", "--quiet"]  # fmt: skip
    assert bench_main(args) == 0
    s = json.loads(out.read_text())["summary"]
    assert s["sent"] == 12 and s["completed"] == 0 and s["failed"] == 12
    assert s["errors"] == {"401:invalid_api_key": 12}
    assert s["ttft_ms"]["p50"] is None


def test_bench_extra_body_reaches_every_request(server, tmp_path: Path) -> None:
    """--extra-body merges into each request: here a response_format the server
    enforces (JSON replies) and a bad one it refuses (every request a 400)."""
    out = tmp_path / "json.json"
    base = ["--base-url", server.url("/v1"), "--api-key", server.api_key, "--model", MODEL_NAME,
            "--concurrency", "2", "--num-requests", "4", "--output-len", "200", "--no-plots", "--quiet"]  # fmt: skip
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    fmt = {"response_format": {"type": "json_schema", "json_schema": {"name": "ok", "schema": schema}}}
    assert bench_main([*base, "--out", str(out), "--extra-body", json.dumps(fmt)]) == 0
    s = json.loads(out.read_text())["summary"]
    assert s["completed"] == 4 and s["failed"] == 0
    # {"ok":true} or {"ok":false}: a handful of tokens, far below the 200 allowed.
    assert 0 < s["total_output_tokens"] <= 4 * 12
    bad = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 7}}}}
    assert bench_main([*base, "--out", str(out), "--extra-body", json.dumps(bad)]) == 0
    assert json.loads(out.read_text())["summary"]["errors"] == {"400:invalid_request_error": 4}


@pytest.mark.e2e
def test_mock_engine_serves_through_the_same_protocol(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import openai

    mock = start_server(tiny_checkpoint, tmp_path / "mock.log", ["--engine", "mock", "--mock-tokens-per-s", "500"])
    try:
        client = openai.OpenAI(base_url=mock.url("/v1"), api_key="unused", max_retries=0)
        r = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=12, n=2)  # fmt: skip
        assert [c.finish_reason for c in r.choices] == ["length", "length"]
        assert r.usage.completion_tokens == 24 and r.choices[0].message.content
        stream = client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].usage.completion_tokens == 5
        c = client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=3, echo=True)
        assert c.choices[0].text.startswith("x") and c.usage.completion_tokens == 3
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL_NAME, messages=[], max_tokens=3)
    finally:
        stop_server(mock)
