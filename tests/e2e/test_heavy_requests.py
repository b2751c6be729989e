"""Requests that are cheap to send and dear to serve (issue 22, findings 3
and 4), on the real server: each is refused with a 400 naming its limit, or
served without freezing the event loop. /health is polled throughout; its
latency is what every other client of the process would feel.

The tests assert that the loop is never frozen (no /health answer takes a
second: before, these requests froze it for 3 to 31 s) and print the median,
95th percentile and maximum; the 100 ms target is a measurement, reported in
docs/benchmarks.md, since on a shared 2-core machine a slow neighbour alone
moves it past 100 ms (measured here: the same run's p95 from 30 to 300 ms)."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import MAX_MODEL_LEN, MODEL_NAME, SECOND_API_KEY, LiveServer

pytestmark = pytest.mark.e2e

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
FROZEN_S = 1.0  # a /health answer slower than this: the loop was frozen


def tool(name: str, parameters: dict, description: str = "") -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def wide(n: int, tag: str) -> dict:
    """An object schema of n optional string properties (distinct per tag: no cache hit)."""
    return {"type": "object", "properties": {f"{tag}_{i}": {"type": "string", "maxLength": 8} for i in range(n)}}


def post(server: LiveServer, path: str, body: dict | bytes, key: str | None = None) -> httpx.Response:
    """`body` as bytes when large: encoded before /health is polled, since the
    poller shares this process (and its GIL) with the encoding."""
    headers = {"Authorization": f"Bearer {key or server.api_key}", "Content-Type": "application/json"}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url(path), content=content, headers=headers, timeout=120)


def assert_limit(r: httpx.Response, param_start: str, flag: str) -> None:
    assert r.status_code == 400, r.text[:300]
    error = r.json()["error"]
    assert error["code"] == "limit_exceeded" and (error["param"] or "").startswith(param_start), error
    assert flag in error["message"], error


@contextmanager
def health_latency(server: LiveServer) -> Iterator[list[float]]:
    """/health answer times (seconds), polled every 50 ms while the block runs."""
    times: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                t0 = time.perf_counter()
                assert http.get(server.url("/health")).status_code == 200
                times.append(time.perf_counter() - t0)
                stop.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield times
    finally:
        stop.set()
        poller.join()


def report(label: str, times: list[float]) -> None:
    p95 = statistics.quantiles(times, n=20)[-1] if len(times) > 1 else times[0]
    print(f"\n[{label}] /health over {len(times)} polls: median {statistics.median(times) * 1000:.1f} ms, "
          f"p95 {p95 * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")  # fmt: skip


@pytest.mark.parametrize(
    ("parameters", "param", "flag"),
    [
        (wide(1025, "p"), "tools.0.function.parameters.properties", "--max-schema-properties"),
        ({"type": "object", "properties": {"a": {"enum": [f"v{i}" for i in range(60_000)]}}},
         "tools.0.function.parameters.properties.a.enum", "--max-schema-enum-values"),
        ({"type": "object", "properties": {"a": {"anyOf": [{"const": i} for i in range(5000)]}}},
         "tools.0.function.parameters.properties.a.anyOf", "--max-schema-any-of"),
    ],
    ids=["2000-properties", "60k-enum", "5000-anyOf"],
)  # fmt: skip
def test_schemas_too_costly_to_enforce_are_refused_naming_the_field(server, parameters, param, flag) -> None:
    """Finding 3: each of these compiled in the engine for minutes (and went
    on after the client left); with tool_choice none, they were still checked."""
    for choice in ("required", "none"):
        body = {"messages": ASK, "tools": [tool("f", parameters)], "tool_choice": choice, "max_tokens": 4}
        assert_limit(post(server, "/v1/chat/completions", body), param, flag)


def test_schema_bytes_per_request_are_capped_also_on_tokenize(server) -> None:
    big = [tool(f"t{i}", {"type": "object", "description": "d" * 60_000}) for i in range(5)]
    assert_limit(post(server, "/v1/chat/completions", {"messages": ASK, "tools": big}), "tools.", "--max-schema-bytes")
    # Finding 4: /tokenize rendered 3.8 MB of tools on the event loop, uncounted by the prompt's size cap.
    many = [tool(f"t{i}", {"type": "object", "description": "d" * 60_000}) for i in range(60)]
    body = json.dumps({"messages": ASK, "tools": many}).encode()
    with health_latency(server) as times:
        r = post(server, "/tokenize", body)
    report("tokenize 3.6 MB of tools", times)
    assert_limit(r, "tools.", "--max-schema-bytes")
    assert max(times) < FROZEN_S


def test_slow_schemas_of_one_key_delay_neither_probes_nor_another_key(server) -> None:
    """Finding 3: four 1000-property tools held every prepare thread, and a
    json_object request waited 30 s behind them. Now a key's new schemas are
    checked and converted on threads that prompts never wait for, one
    request at a time per key, each holding its key's turn until the engine
    compiled its grammar (its first output): another key waits behind at
    most one of them in the engine's compile queue. (600 properties here:
    each still takes the engine most of a second to compile.)"""
    results: dict[str, float] = {}
    statuses: list[str] = []

    def fmt(schema: dict) -> dict:
        return {"type": "json_schema", "json_schema": {"name": "wide", "schema": schema}}

    bodies = [json.dumps({"messages": ASK, "response_format": fmt(wide(600, f"slow{i}_{time.time_ns()}")),
                          "max_tokens": 1}).encode() for i in range(4)]  # fmt: skip

    def slow(i: int) -> None:
        r = post(server, "/v1/chat/completions", bodies[i])
        statuses.append(f"{r.status_code} {r.text[:200]}")
        results[f"slow{i}"] = time.perf_counter()

    with health_latency(server) as times:
        workers = [threading.Thread(target=slow, args=(i,)) for i in range(4)]
        for w in workers:
            w.start()
        time.sleep(0.3)  # the four are in
        other = {"messages": ASK, "response_format": {"type": "json_object"}, "max_tokens": 4}
        assert post(server, "/v1/chat/completions", other, key=SECOND_API_KEY).status_code == 200
        results["other key"] = time.perf_counter()
        for w in workers:
            w.join()
    report("4 x 600-property schemas, one key", times)
    order = sorted(results, key=results.__getitem__)
    print(f"[schemas] finished in this order: {order}")
    assert len(results) == 5 and all(s.startswith("200") for s in statuses), statuses
    assert order.index("other key") < 2  # behind at most the one compile ahead of it
    assert max(times) < FROZEN_S


def test_logprob_work_is_capped_and_built_off_the_loop(server) -> None:
    """Finding 4: n=24 x 240 tokens x top_logprobs 20 (inside every other
    limit) froze /health for 3-5 s; at n=64 x 440, for 23-31 s."""
    asked = {"messages": ASK, "n": 24, "max_tokens": 240, "logprobs": True, "top_logprobs": 20, "ignore_eos": True}
    assert_limit(post(server, "/v1/chat/completions", asked), "top_logprobs", "--max-logprob-entries")
    completion = {"prompt": "x", "n": 24, "max_tokens": 240, "logprobs": 5, "ignore_eos": True}
    assert_limit(post(server, "/v1/completions", completion), "logprobs", "--max-logprob-entries")
    within = {**asked, "n": 6}  # 6 x 240 x 21 = 30240 entries, under the default 32768
    for stream in (False, True):
        with health_latency(server) as times:
            r = post(server, "/v1/chat/completions", {**within, "stream": stream})
        report(f"n=6 x 240 x top-20 logprobs, stream={stream}", times)
        assert r.status_code == 200, r.text[:300]
        if not stream:
            assert sum(len(c["logprobs"]["content"]) for c in r.json()["choices"]) == 6 * 240
        assert max(times) < FROZEN_S


def test_detokenize_is_bounded(server) -> None:
    """Finding 4: 1.9 M ids were decoded on the event loop for seconds."""
    ids = json.dumps({"tokens": [1] * 1_900_000}, separators=(",", ":")).encode()
    with health_latency(server) as times:
        r = post(server, "/detokenize", ids)
    report("detokenize 1.9 M ids", times)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"  # refused unread
    assert max(times) < FROZEN_S
    assert_limit(post(server, "/detokenize", {"tokens": [1] * (MAX_MODEL_LEN + 1)}), "tokens", "context length")
    ok = post(server, "/detokenize", {"model": MODEL_NAME, "tokens": [100, 200, 300]})
    assert ok.status_code == 200 and isinstance(ok.json()["prompt"], str)


def test_a_self_referencing_schema_is_a_400_naming_the_field(server) -> None:
    """Finding 8: `{"$ref": "#"}` masked every token; the engine failed the request (a 500)."""
    for schema in ({"$ref": "#"}, {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}):
        fmt = {"type": "json_schema", "json_schema": {"name": "loop", "schema": schema}}
        r = post(server, "/v1/chat/completions", {"messages": ASK, "response_format": fmt, "max_tokens": 8})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "response_format.json_schema.schema"
        assert "no finite JSON value" in r.json()["error"]["message"]
    assert httpx.get(server.url("/health"), timeout=10).status_code == 200


def test_schema_errors_name_no_source_paths(server) -> None:
    """Finding 11: xgrammar's messages began with its C++ file and line."""
    bad = {"type": "object", "properties": {"a": {"$ref": "#/defs/missing"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "bad", "schema": bad}}
    r = post(server, "/v1/chat/completions", {"messages": ASK, "response_format": fmt, "max_tokens": 8})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "defs" in message and "/project" not in message and ".cc:" not in message, message
    assert json.dumps(r.json()).count("\n") == 0
