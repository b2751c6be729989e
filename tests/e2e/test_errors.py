"""Error statuses, auth, probes, metrics and disconnect abort on the real server."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MAX_MODEL_LEN, MODEL_NAME

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Hello"}]


def post(server, path: str, body=None, content: bytes | None = None, headers=None) -> httpx.Response:
    h = {**server.headers(), **(headers or {})}
    if content is not None:
        return httpx.post(server.url(path), headers={**h, "content-type": "application/json"}, content=content)
    return httpx.post(server.url(path), headers=h, json=body, timeout=60)


def assert_envelope(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code
    return err


def metric(server, name: str, **labels: str) -> float:
    """A series' value now (test servers render every scrape: --metrics-max-age 0)."""
    text = httpx.get(server.url("/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MESSAGES, "temperature": 5}, "temperature"),
        ({"messages": MESSAGES, "max_tokens": -1}, "max_tokens"),
        ({"messages": MESSAGES, "max_tokens": "many"}, "max_tokens"),
        ({"messages": MESSAGES, "n": 0}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0"),
        ({"messages": MESSAGES, "top_logprobs": 3}, None),
        ({"messages": MESSAGES, "logit_bias": {"99999999": 5}}, "logit_bias"),
        ({"messages": MESSAGES, "logit_bias": {"abc": 5}}, None),
        ({"messages": MESSAGES, "stop": [""]}, None),
        ({"messages": MESSAGES, "stream_options": {"include_usage": True}}, None),
        ({"messages": MESSAGES, "min_tokens": 30, "max_tokens": 5}, "min_tokens"),
        ({}, "messages"),
        ([1, 2, 3], None),
    ],
)
def test_bad_chat_requests_get_400(server, body, param) -> None:
    err = assert_envelope(post(server, "/v1/chat/completions", body), 400)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": []},
        {"prompt": [[]]},
        {"prompt": [1, "a"]},
        {"prompt": [10**9]},
        {"prompt": "x", "logprobs": 50},
        {"prompt": "x", "suffix": "y"},
    ],
)
def test_bad_completion_requests_get_400(server, body) -> None:
    assert_envelope(post(server, "/v1/completions", body), 400)


def test_malformed_json_and_bad_utf8_get_400(server) -> None:
    assert_envelope(post(server, "/v1/chat/completions", content=b'{"messages": [}'), 400)
    assert_envelope(post(server, "/v1/chat/completions", content=b'{"messages": "\xff\xfe"}'), 400)


def test_context_length_exceeded(server, client) -> None:
    err = assert_envelope(post(server, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": MAX_MODEL_LEN}),
                          400, "context_length_exceeded")  # fmt: skip
    assert str(MAX_MODEL_LEN) in err["message"]
    long_prompt = "word " * (MAX_MODEL_LEN * 2)
    assert_envelope(post(server, "/v1/completions", {"prompt": long_prompt}), 400, "context_length_exceeded")
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": long_prompt}])
    assert exc.value.status_code == 400 and exc.value.code == "context_length_exceeded"


def test_unknown_model_is_404(client) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-4", messages=MESSAGES, max_tokens=2)
    assert exc.value.code == "model_not_found"


def test_unknown_fields_are_ignored(client) -> None:
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=2, extra_body={"some_future_field": {"x": 1}}
    )
    assert r.choices[0].finish_reason in ("stop", "length")


PROTECTED = [
    ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"),
    ("GET", f"/v1/models/{MODEL_NAME}"), ("POST", "/tokenize"), ("POST", "/detokenize"),
    ("GET", "/version"), ("GET", "/openapi.json"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_protected_route_refuses_missing_and_wrong_keys(server, method: str, path: str) -> None:
    body = {"prompt": "x", "messages": MESSAGES, "tokens": [1], "max_tokens": 1} if method == "POST" else None
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": server.api_key}):
        r = httpx.request(method, server.url(path), json=body, headers=headers)
        assert_envelope(r, 401, "invalid_api_key")
    assert httpx.request(method, server.url(path), json=body, headers=server.headers()).status_code in (200, 400)


def test_auth(server) -> None:
    body = {"messages": MESSAGES, "max_tokens": 2}
    r = httpx.post(server.url("/v1/chat/completions"), json=body)
    assert_envelope(r, 401, "invalid_api_key")
    r = httpx.post(server.url("/v1/chat/completions"), json=body, headers={"Authorization": "Bearer wrong"})
    err = assert_envelope(r, 401, "invalid_api_key")
    assert server.api_key not in r.text and "wrong" not in err["message"]
    assert_envelope(httpx.get(server.url("/v1/models")), 401)
    bad = openai.OpenAI(base_url=server.url("/v1"), api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    # Probes and metrics stay open.
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(server.url(path)).status_code == 200
    # The server's own log: JSON access lines with request ids, and never the key.
    r = httpx.post(server.url("/v1/chat/completions"), json=body, headers={**server.headers(), "X-Request-ID": "e2e-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "e2e-1"
    time.sleep(0.2)
    log = server.log_path.read_text(errors="replace")
    assert server.api_key not in log
    access = [json.loads(line) for line in log.splitlines() if line.startswith("{") and '"lemur.access"' in line]
    assert any(a["request_id"] == "e2e-1" and a["status"] == 200 and a["key"] == "default" for a in access)
    assert any(a["status"] == 401 and a["key"] == "none" for a in access)


def test_models_version_tokenize(server, client) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    v = httpx.get(server.url("/version"), headers=server.headers()).json()
    assert v["version"] and v["vllm"].startswith("0.32")
    tok = post(server, "/tokenize", {"prompt": "def main():", "add_special_tokens": True}).json()
    assert tok["max_model_len"] == MAX_MODEL_LEN and tok["count"] == len(tok["tokens"])
    back = post(server, "/detokenize", {"tokens": tok["tokens"][1:]}).json()  # drop <s>
    assert back["prompt"] == "def main():"
    assert_envelope(post(server, "/detokenize", {"tokens": [-1]}), 400)


def test_metrics_exported(server, client) -> None:
    client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=3)
    text = httpx.get(server.url("/metrics")).text
    for name in (
        "lemur:http_requests_total", "lemur:time_to_first_token_seconds_bucket",
        "lemur:time_per_output_token_seconds_bucket", "lemur:e2e_request_latency_seconds_bucket",
        "lemur:prompt_tokens_total", "lemur:generation_tokens_total",
        "lemur:num_requests_running", "lemur:num_requests_waiting", "vllm:num_requests_running",
    ):  # fmt: skip
        assert name in text, name
    assert metric(server, "lemur:http_requests_total", route="/v1/chat/completions", status="200") >= 1
    before = metric(server, "lemur:http_requests_total", route="/v1/chat/completions", status="400")
    post(server, "/v1/chat/completions", {"messages": []})
    assert metric(server, "lemur:http_requests_total", route="/v1/chat/completions", status="400") == before + 1


def wait_engine_idle(server, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(server, "vllm:num_requests_running") == 0 and metric(server, "lemur:num_requests_running") == 0:
            return
        time.sleep(0.1)
    raise AssertionError("engine still has running requests")


LONG = {"messages": MESSAGES, "max_tokens": MAX_MODEL_LEN - 32, "ignore_eos": True}


def test_stream_disconnect_aborts_engine_request(server, client) -> None:
    aborted = metric(server, "lemur:request_success_total", finished_reason="abort")
    generated = metric(server, "vllm:generation_tokens_total")
    with httpx.stream("POST", server.url("/v1/chat/completions"), headers=server.headers(),
                      json={**LONG, "stream": True}, timeout=60) as r:  # fmt: skip
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert all(line.startswith("data: ") or not line for line in got)
    # The client is gone: the gateway must abort the engine request, long
    # before it would have produced its max_tokens.
    wait_engine_idle(server)
    assert metric(server, "lemur:request_success_total", finished_reason="abort") == aborted + 1
    assert metric(server, "vllm:generation_tokens_total") - generated < LONG["max_tokens"] / 2
    r = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=3)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_non_stream_disconnect_aborts_engine_request(server) -> None:
    aborted = metric(server, "lemur:request_success_total", finished_reason="abort")
    generated = metric(server, "vllm:generation_tokens_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url("/v1/chat/completions"), headers=server.headers(), json={**LONG, "n": 4}, timeout=0.3)
    wait_engine_idle(server)
    assert metric(server, "lemur:request_success_total", finished_reason="abort") == aborted + 1
    assert metric(server, "vllm:generation_tokens_total") - generated < 4 * LONG["max_tokens"] / 2


def _nested(depth: int) -> bytes:
    return b'{"messages": [{"role": "user", "content": "hi"}], "extra": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"messages": [{"role": "user", "content": "' + b"a" * (10 * 1024 * 1024) + b'"}]}', 413),
        (_nested(64), 400),
        (_nested(100_000), 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e30}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "n": 1000000000000}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": 0}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "presence_penalty": 1e400}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1e20}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["' + b"x" * 300 + b'"]}', 400),
        (b'{"messages": [{"role": "user", "content": ["not a part"]}]}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes please"}', 400),
        (b'{"messages": "hi"}', 400),
        (b"", 400),
        (b"null", 400),
    ],
    ids=[
        "10MB",
        "nest64",
        "nest100k",
        "huge-max-tokens",
        "huge-n",
        "neg-temp",
        "top-p-0",
        "inf-penalty",
        "float-seed",
        "long-stop",
        "bad-part",
        "bad-stream",
        "messages-str",
        "empty",
        "null",
    ],
)
def test_bad_input_table(server, raw: bytes, status: int) -> None:
    r = httpx.post(server.url("/v1/chat/completions"), content=raw, timeout=60,
                   headers={**server.headers(), "content-type": "application/json"})  # fmt: skip
    assert_envelope(r, status)


def test_many_logit_bias_entries_and_prompts(server) -> None:
    bias = {str(i): 1 for i in range(1100)}
    assert_envelope(post(server, "/v1/chat/completions", {"messages": MESSAGES, "logit_bias": bias}), 400)
    assert_envelope(post(server, "/v1/completions", {"prompt": ["x"] * 300, "max_tokens": 1}), 400)


def test_disconnect_storm(server, client) -> None:
    """200 streams cancelled at random points; the engine ends with nothing
    running or waiting, and a normal request still succeeds."""
    import asyncio
    import random

    rng = random.Random(7)
    url = server.url("/v1/chat/completions")
    body = {"messages": MESSAGES, "max_tokens": 200, "ignore_eos": True, "stream": True}

    async def one(http: httpx.AsyncClient, lines_before_cancel: int, delay: float) -> None:
        await asyncio.sleep(delay)
        async with http.stream("POST", url, json=body, headers=server.headers()) as r:
            seen = 0
            async for _ in r.aiter_lines():
                seen += 1
                if seen >= lines_before_cancel:
                    break  # leaving the block closes the connection mid-stream

    async def storm() -> None:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=250)) as http:
            jobs = [one(http, rng.randint(1, 40), rng.uniform(0, 1.0)) for _ in range(200)]
            for job in [asyncio.create_task(j) for j in jobs]:
                await job

    generated = metric(server, "vllm:generation_tokens_total")
    asyncio.run(storm())
    wait_engine_idle(server, timeout=30)
    assert metric(server, "vllm:num_requests_waiting") == 0
    assert metric(server, "lemur:num_requests_waiting") == 0
    # Far fewer tokens than 200 streams x 200 tokens were generated: they were aborted.
    assert metric(server, "vllm:generation_tokens_total") - generated < 200 * 200 / 2
    r = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_the_key_is_checked_before_the_body_is_read(server) -> None:
    """Cheapest check first: a keyless request is a 401 whatever its body is,
    and the server answers it without waiting for (or buffering) the body."""
    import socket

    url = server.url("/v1/chat/completions")
    garbage = httpx.post(url, content=b'{"messages": [}', headers={"content-type": "application/json"})
    assert_envelope(garbage, 401, "invalid_api_key")
    oversized = httpx.post(url, content=b"x" * (5 * 1024 * 1024))  # over --max-body-bytes
    assert_envelope(oversized, 401, "invalid_api_key")
    assert_envelope(post(server, "/v1/chat/completions", content=b'{"messages": [}'), 400)  # with the key: parsed
    port = int(server.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        # Announce a 1 MB body and send none of it: the 401 comes back without
        # it (waiting for the body would end in the read deadline's 408).
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 401"), head[:100]


def _call_history(arguments: str) -> dict:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    return {"messages": [*turns, {"role": "tool", "tool_call_id": "call_1", "content": "ok"}], "max_tokens": 2}


def test_lone_surrogates_hidden_in_arguments_or_keys_are_400_naming_the_field(server) -> None:
    """Finding 6: the body's strings were checked, but not the object an
    arguments string encodes, nor any key (a schema's property names)."""
    hidden = json.dumps(_call_history('{"city": "\\ud800"}')).encode()  # a valid string that encodes "\ud800"
    err = assert_envelope(post(server, "/v1/chat/completions", content=hidden), 400)
    assert err["param"] == "messages.1.tool_calls.0.function.arguments" and "surrogate" in err["message"]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object",
            "properties": {"\ud800": {"type": "string"}}}}}  # fmt: skip
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    for path in ("/tokenize", "/v1/chat/completions"):
        err = assert_envelope(post(server, path, content=json.dumps(body).encode()), 400)  # ASCII: "\\ud800" escaped
        assert "tools.0.function.parameters.properties" in (err["param"] or "") + err["message"], err
        assert "surrogate" in err["message"]
    key = json.dumps({"prompt": "x", "logit_bias": {"\udfff": 1}}).encode()
    assert_envelope(post(server, "/v1/completions", content=key), 400)
    assert post(server, "/v1/chat/completions", _call_history('{"city": "\\ud83d\\ude00"}')).status_code == 200


def test_open_metrics_name_no_keys_but_keep_the_engine_gauges(server) -> None:
    """Finding 12: /metrics was open and named every key with its traffic.
    Without a key it still has what probes and an endpoint picker read."""
    assert post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    open_text = httpx.get(server.url("/metrics"), timeout=30).text
    for gauge in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
                  "lemur:num_requests_queued", "lemur:http_requests_total"):  # fmt: skip
        assert gauge in open_text, gauge
    assert "lemur:key_" not in open_text and 'key="' not in open_text
    keyed = httpx.get(server.url("/metrics"), headers=server.headers(), timeout=30).text
    assert 'lemur:key_requests_total{key="' in keyed and "lemur:key_tokens_total" in keyed
    assert (
        httpx.get(server.url("/metrics"), headers={"Authorization": "Bearer sk-wrong"}, timeout=30).status_code == 401
    )
