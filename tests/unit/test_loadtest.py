"""`lemur bench`: its statistics, and the mock engine it can load-test."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from lemur.loadtest.client import RequestResult
from lemur.loadtest.report import Slo, percentile, summarize, timeline
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
        # It needs no vLLM: the mock path never imports it.
        assert httpx.get(mock.url("/version"), timeout=10).json()["vllm"] == "none (mock engine)"
    finally:
        stop_server(mock)
