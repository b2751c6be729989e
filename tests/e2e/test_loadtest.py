"""`lemur bench` against the real server, and how it counts errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lemur.loadtest.cli import main as bench_main
from tests.conftest import MODEL_NAME

FIGURES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")


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


@pytest.mark.parametrize("endpoint", ["responses", "messages"])
def test_bench_drives_the_agent_apis_streamed(server, tmp_path: Path, endpoint: str) -> None:
    """The Responses and Messages APIs, streamed, with the same figures as chat
    (lengths vary: ignore_eos is chat's vLLM extension)."""
    out = tmp_path / f"{endpoint}.json"
    args = ["--base-url", server.url("/v1"), "--api-key", server.api_key, "--endpoint", endpoint,
            "--concurrency", "4", "--num-requests", "12", "--input-len", "32", "--output-len", "16",
            "--out", str(out), "--no-plots", "--quiet"]  # fmt: skip
    assert bench_main(args) == 0
    s = json.loads(out.read_text())["summary"]
    assert s["completed"] == s["sent"] == 12, s["errors"]
    assert 12 <= s["total_output_tokens"] <= 12 * 16  # usage from the terminal events
    assert s["ttft_ms"]["p50"] is not None and s["ttft_ms"]["p50"] <= s["e2e_ms"]["p50"]
    assert s["output_token_throughput"] > 0
