"""Bounded work per request, on the real server: a small body cannot ask for
millions of tokens of engine work, and each refusal names its limit."""

from __future__ import annotations

import re
import statistics
import time

import httpx
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.e2e

# ~1.3 KB: n=128 x 256 prompts x the whole context each, eos ignored. Before
# the limits this was ~134M tokens of work for a 70B context (16M here).
EXPLOIT = {"prompt": ["Tell me everything."] * 256, "n": 128, "ignore_eos": True}


def post(server: LiveServer, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url(path), json=body, headers=server.headers(), timeout=60)


def assert_limit(r: httpx.Response, param: str, *words: str) -> None:
    assert r.status_code == 400, r.text[:500]
    error = r.json()["error"]
    assert error["code"] == "limit_exceeded" and error["param"] == param
    for word in words:
        assert word in error["message"], (word, error["message"])


def engine_prompt_tokens(server: LiveServer) -> float:
    text = httpx.get(server.url("/metrics"), headers=server.headers(), timeout=30).text
    values = re.findall(r"^vllm:prompt_tokens_total(?:\{[^}]*\})? (\S+)$", text, re.M)
    assert values, "vllm:prompt_tokens_total is not exported"
    return sum(float(v) for v in values)


def test_n_times_prompts_is_refused_before_any_work(server: LiveServer) -> None:
    before = engine_prompt_tokens(server)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        r = post(server, "/v1/completions", EXPLOIT)
        times.append(time.perf_counter() - t0)
        assert_limit(r, "n", "32768 sequences", "n=128 x 256 prompts", "--max-sequences-per-request", "64")
    # Reported, not asserted: a wall-clock bound fails on a loaded machine. The
    # order (refused before tokenizing) is what the counter below shows.
    print(f"\n[limits] exploit body answered 400 in {statistics.median(times) * 1000:.1f} ms (median of 5)")
    assert engine_prompt_tokens(server) == before  # nothing reached the engine
    assert_limit(post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 65}),
                 "n", "65 sequences (n=65)")  # fmt: skip


def test_max_tokens_above_the_limit(server: LiveServer) -> None:
    chat = {"messages": [{"role": "user", "content": "x"}]}
    assert_limit(post(server, "/v1/chat/completions", {**chat, "max_tokens": 4097}), "max_tokens", "4096")
    r = post(server, "/v1/chat/completions", {**chat, "max_completion_tokens": 10**6})
    assert_limit(r, "max_completion_tokens", "--max-tokens-limit")
    assert_limit(post(server, "/v1/completions", {"prompt": "x", "max_tokens": 5000}), "max_tokens", "5000")


def test_echo_logprobs_is_bounded(server: LiveServer) -> None:
    """Each choice repeats every prompt token's logprobs: prompt x n is capped."""
    body = {"prompt": "word " * 400, "echo": True, "logprobs": 5, "max_tokens": 1, "n": 32}
    r = post(server, "/v1/completions", body)
    assert_limit(r, "echo", "x n=32", "--max-echo-logprob-tokens", "8192")
    small = post(server, "/v1/completions", {**body, "n": 2})
    assert small.status_code == 200
    choices = small.json()["choices"]
    assert len(choices) == 2 and len(choices[0]["logprobs"]["tokens"]) > 400


def test_the_default_max_tokens_is_bounded_by_the_context(server: LiveServer) -> None:
    r = post(server, "/v1/completions", {"prompt": "x", "ignore_eos": True, "temperature": 0})
    usage = r.json()["usage"]
    assert r.status_code == 200 and usage["prompt_tokens"] + usage["completion_tokens"] == 512
