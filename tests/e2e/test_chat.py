"""Chat completions through the official openai SDK against the real server."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import MODEL_NAME

pytestmark = pytest.mark.e2e

MESSAGES = [
    {"role": "system", "content": "You are a helpful, respectful, and honest assistant."},
    {"role": "user", "content": "Write a Python function that reverses a list."},
]


def im_end_id(server) -> int:
    r = httpx.post(
        server.url("/tokenize"), headers=server.headers(), json={"prompt": "<|im_end|>", "add_special_tokens": False}
    )
    tokens = r.json()["tokens"]
    assert len(tokens) == 1
    return tokens[0]


def test_chat_basic_shape_and_usage(client, server) -> None:
    r = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=12, seed=1)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == MODEL_NAME
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    # The prompt is the ChatML rendering; /tokenize renders the same way.
    tok = httpx.post(server.url("/tokenize"), headers=server.headers(), json={"messages": MESSAGES}).json()
    assert r.usage.prompt_tokens == tok["count"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 1 <= r.usage.completion_tokens <= 12


def test_length_finish_reason(client) -> None:
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_completion_tokens=5, extra_body={"ignore_eos": True}
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5


def test_stops_at_im_end_and_hides_it(client, server) -> None:
    """The trap: eos is </s>, a turn ends with <|im_end|>. The server must stop
    there although the model's eos differs, and never show the token."""
    bias = {str(im_end_id(server)): 100}
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=50, logit_bias=bias, extra_body={"min_tokens": 3}
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert "<|im_end|>" not in choice.message.content
    assert choice.message.content  # the three tokens before the stop
    assert r.usage.completion_tokens <= 4  # 3 forced tokens + the stop token
    # Contrast: with stop tokens ignored, the same bias runs on to max_tokens.
    r2 = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=20, logit_bias=bias,
        extra_body={"min_tokens": 3, "ignore_eos": True},
    )  # fmt: skip
    assert r2.choices[0].finish_reason == "length"
    assert r2.usage.completion_tokens == 20
    assert "<|im_end|>" not in r2.choices[0].message.content


def test_seed_reproducible(client) -> None:
    kw = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=24, temperature=1.0, extra_body={"ignore_eos": True})
    a = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    c = client.chat.completions.create(seed=4321, **kw).choices[0].message.content
    assert a == b
    assert a != c


def test_n_choices(client) -> None:
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=8, n=2, extra_body={"ignore_eos": True}
    )
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(c.finish_reason == "length" for c in r.choices)
    assert r.usage.completion_tokens == 16  # both choices count


def test_stop_string(client) -> None:
    kw = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=32, seed=99, temperature=1.0,
              extra_body={"ignore_eos": True})  # fmt: skip
    full = client.chat.completions.create(**kw).choices[0].message.content
    assert len(full) > 8
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = client.chat.completions.create(stop=[stop], **kw).choices[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.message.content
    assert full.startswith(cut.message.content)
    assert len(cut.message.content) < len(full)


def test_logprobs(client) -> None:
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=6, logprobs=True, top_logprobs=3, seed=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0.0
        assert len(item.top_logprobs) == 3
        values = [t.logprob for t in item.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert item.logprob <= values[0] + 1e-6
    # The tokens' raw bytes spell the reply (a token can be half a character,
    # which the text shows as U+FFFD).
    raw = b"".join(bytes(i.bytes) for i in content)
    assert raw.decode("utf-8", errors="replace") == r.choices[0].message.content


def test_greedy_is_deterministic(client) -> None:
    kw = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=16, temperature=0)
    assert client.chat.completions.create(**kw).choices[0].message.content == (
        client.chat.completions.create(**kw).choices[0].message.content
    )


def test_stream_incremental_done_and_usage_matches(server, client) -> None:
    body = {
        "model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 128, "seed": 11, "temperature": 1.0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    t0 = time.perf_counter()
    arrivals: list[tuple[float, str]] = []
    with httpx.stream("POST", server.url("/v1/chat/completions"), headers=server.headers(), json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                arrivals.append((time.perf_counter() - t0, line))
    lines = [line for _, line in arrivals]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    import json

    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 128
    content_times = [
        t
        for (t, _), c in zip(arrivals, chunks, strict=False)
        if c["choices"] and c["choices"][0]["delta"].get("content")
    ]
    assert len(content_times) > 10
    first, last = content_times[0], content_times[-1]
    # Incremental: most of the generation time passes after the first token arrived.
    assert last - first > 0.5 * last, f"first content at {first:.3f}s, last at {last:.3f}s"
    streamed_text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    # Same request without streaming: same text and same usage.
    body.pop("stream_options")
    body["stream"] = False
    plain = httpx.post(server.url("/v1/chat/completions"), headers=server.headers(), json=body, timeout=60).json()
    assert plain["usage"] == usage_chunk["usage"]
    assert plain["choices"][0]["message"]["content"] == streamed_text


def test_sdk_streaming_with_usage(client) -> None:
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=10, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]


def test_async_sdk_concurrent(async_client_factory) -> None:
    async def run() -> list[str]:
        client = async_client_factory()
        async with client:
            rs = await asyncio.gather(
                *(
                    client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=8, seed=i)
                    for i in range(6)
                )
            )
            stream = await client.chat.completions.create(
                model=MODEL_NAME, messages=MESSAGES, max_tokens=8, stream=True
            )
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        return [r.choices[0].finish_reason for r in rs] + ["".join(parts)]

    out = asyncio.run(run())
    assert all(f in ("stop", "length") for f in out[:6])
    assert out[6]  # the streamed reply has text


def test_content_parts_and_developer_role(client, server) -> None:
    parts = [{"type": "text", "text": "Write a Python function"}, {"type": "text", "text": "that reverses a list."}]
    msgs = [{"role": "developer", "content": "You are a helpful, respectful, and honest assistant."},
            {"role": "user", "content": parts}]  # fmt: skip
    r = client.chat.completions.create(model=MODEL_NAME, messages=msgs, max_tokens=4)
    joined = [MESSAGES[0], {"role": "user", "content": "Write a Python function\nthat reverses a list."}]
    tok = httpx.post(server.url("/tokenize"), headers=server.headers(), json={"messages": joined}).json()
    assert r.usage.prompt_tokens == tok["count"]


def test_default_dtype_is_bf16_and_it_generates(client, server) -> None:
    """The shared server runs in the dtype a user gets by default: vLLM on a
    CPU downcasts this float32 checkpoint to bfloat16. That is the dtype in
    which vLLM's CPU kernels use AMX on Intel Xeons (SIGILL without the
    per-process permission our plugin asks for), and this checkpoint's shapes
    are the ones that crashed there."""
    v = httpx.get(server.url("/version"), headers=server.headers()).json()
    assert v["dtype"] == "bfloat16"
    log = server.log_path.read_text()
    assert "Downcasting torch.float32 to torch.bfloat16" in log
    for process in ("EngineCore", "VllmWorker-0"):  # our plugin ran in every engine process
        assert f"lemur hooks in {process} (pid" in log, process
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
    )
    choice = r.choices[0]
    assert choice.finish_reason == "length" and r.usage.completion_tokens == 24
    assert len(choice.message.content) >= 12  # real text decoded from 24 sampled tokens
    again = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
    )
    assert again.choices[0].message.content == choice.message.content  # greedy is deterministic in bf16 too
