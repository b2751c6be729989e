"""`/v1/messages` through the official `anthropic` SDK (`messages.create`,
`messages.stream`, `messages.count_tokens`), with the key as `x-api-key`
(`api_key=`) and as a bearer token (`auth_token=`), on the real engine with
the untrained tiny checkpoint: the checks are on shapes, events and what the
grammar holds. Errors come in Anthropic's envelope."""

from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import pytest

from tests.conftest import MAX_MODEL_LEN, MODEL_NAME

pytestmark = pytest.mark.e2e

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "$schema": "http://json-schema.org/draft-07/schema#",  # as Claude Code sends its schemas
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 16},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
FORCED = {"type": "tool", "name": "get_weather"}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
ORPHAN_RESULT = {"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}


def prompt_tokens(m) -> int:
    """The whole prompt: Anthropic counts the part read from the cache apart."""
    return m.usage.input_tokens + m.usage.cache_read_input_tokens


@pytest.fixture(scope="module", params=["x-api-key", "bearer"])
def claude(server, request: pytest.FixtureRequest) -> anthropic.Anthropic:
    key = {"api_key": server.api_key} if request.param == "x-api-key" else {"auth_token": server.api_key}
    return anthropic.Anthropic(base_url=server.base_url, max_retries=0, timeout=60, **key)


def test_create_answers_with_text_and_usage(claude) -> None:
    m = claude.messages.create(model=MODEL_NAME, max_tokens=8, messages=ASK, system="Be brief.")
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant" and m.model == MODEL_NAME
    assert m.stop_reason in ("end_turn", "max_tokens") and m.stop_sequence is None
    assert [b.type for b in m.content] == ["text"] or (m.content == [] and m.stop_reason == "end_turn")
    assert 0 < m.usage.output_tokens <= 8 and m.usage.input_tokens > 0


def test_max_tokens_and_stop_sequences_give_anthropic_stop_reasons(claude, server) -> None:
    greedy = {"extra_body": {"temperature": 0}}  # this SDK no longer takes temperature itself
    cut = claude.messages.create(model=MODEL_NAME, max_tokens=1, messages=ASK, **greedy)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 1
    # Stop at whatever greedy decoding says second: that string is a stop sequence it meets.
    two = claude.messages.create(model=MODEL_NAME, max_tokens=6, messages=ASK, **greedy)
    text = two.content[0].text if two.content else ""
    if len(text) >= 2:
        stop = text[1:3].strip() or text[1]
        stopped = claude.messages.create(model=MODEL_NAME, max_tokens=6, messages=ASK, stop_sequences=[stop], **greedy)
        assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    raw = httpx.post(server.url("/v1/messages"), headers={"x-api-key": server.api_key},
                     json={"model": MODEL_NAME, "max_tokens": 2, "messages": ASK}).json()  # fmt: skip
    assert "stop_sequence" in raw and raw["stop_sequence"] is None  # present, and null


def test_max_tokens_is_a_cap_as_claude_code_sends_it(claude) -> None:
    """Claude Code asks for 32000 tokens whatever the model: the reply stops at
    the server's cap or the context's end instead of a 400."""
    m = claude.messages.create(model=MODEL_NAME, max_tokens=32000, messages=ASK)
    assert m.stop_reason in ("end_turn", "max_tokens") and m.usage.input_tokens + m.usage.output_tokens <= MAX_MODEL_LEN


def test_a_prompt_over_the_context_says_how_many_tokens_it_has(server) -> None:
    long = [{"role": "user", "content": "a b " * 600}]
    body = {"model": MODEL_NAME, "max_tokens": 4, "messages": long}
    r = httpx.post(server.url("/v1/messages"), headers={"x-api-key": server.api_key}, json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert f"maximum context length is {MAX_MODEL_LEN} tokens" in r.json()["error"]["message"]
    assert "in the prompt" in r.json()["error"]["message"]


def test_stream_events_in_order(claude) -> None:
    with claude.messages.stream(model=MODEL_NAME, max_tokens=12, messages=ASK) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events if not e.type.startswith(("text", "input_json"))]  # the SDK's own helpers
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1:4] == ["content_block_start", "content_block_delta", "content_block_delta"] or kinds[1] in (
        "content_block_start", "message_delta")  # fmt: skip
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert final.content[0].text == text and final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0


def test_pings_while_the_prompt_is_prefilled(server) -> None:
    """The session server pings after PING_INTERVAL without a token, so every
    prefill is a long one here: `message_start` and pings go out before the
    first token, and none after it."""
    body = {"model": MODEL_NAME, "max_tokens": 6, "stream": True,
            "messages": [{"role": "user", "content": "a b c " * 100}]}  # fmt: skip
    headers = {"x-api-key": server.api_key}
    events: list[tuple[str, dict]] = []
    with httpx.stream("POST", server.url("/v1/messages"), headers=headers, json=body, timeout=60) as r:
        assert r.status_code == 200
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    kinds = [k for k, _ in events]
    first_block = kinds.index("content_block_start")
    assert kinds[0] == "message_start" and kinds[1] == "ping", kinds
    assert set(kinds[1:first_block]) == {"ping"} and "ping" not in kinds[first_block:], kinds
    assert all(data == {"type": "ping"} for k, data in events if k == "ping")
    assert kinds[-2:] == ["message_delta", "message_stop"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_forced_tool_call_follows_its_schema_and_its_result_continues(claude, stream: bool) -> None:
    ask = {"model": MODEL_NAME, "max_tokens": 160, "messages": ASK, "tools": [WEATHER], "tool_choice": FORCED,
           "extra_body": {"temperature": 0}}  # fmt: skip
    if stream:
        with claude.messages.stream(**ask) as s:
            kinds = [e.type for e in s]
            m = s.get_final_message()
        assert "content_block_start" in kinds and "input_json" in kinds
    else:
        m = claude.messages.create(**ask)
    assert m.stop_reason == "tool_use"
    [call] = m.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.id
    jsonschema.validate(call.input, WEATHER["input_schema"])
    result = {"type": "tool_result", "tool_use_id": call.id, "content": '{"temperature": 21}'}
    history = [*ASK, {"role": "assistant", "content": m.content}, {"role": "user", "content": [result]}]
    follow = claude.messages.create(model=MODEL_NAME, max_tokens=8, messages=history, tools=[WEATHER])
    assert prompt_tokens(follow) > prompt_tokens(m)  # the call and its result are in the prompt


def test_count_tokens_counts_what_create_sends(claude) -> None:
    counted = claude.messages.count_tokens(model=MODEL_NAME, messages=ASK, tools=[WEATHER], system="Be brief.")
    sent = claude.messages.create(model=MODEL_NAME, max_tokens=1, messages=ASK, tools=[WEATHER], system="Be brief.")
    assert counted.input_tokens == prompt_tokens(sent) > 0


def test_what_claude_code_sends_is_accepted(server) -> None:
    """Its attribution block (dropped from the prompt), thinking,
    context_management, output_config, a mid-conversation system message,
    defer_loading, and ?beta=true; with and without the attribution, the
    prompt has the same tokens."""
    body = {
        "model": MODEL_NAME, "max_tokens": 2, "stream": False,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332; cc_entrypoint=cli"},
                   {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [*ASK, {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "x"},
                                                             {"type": "text", "text": "Let me see."}]},
                     {"role": "system", "content": "Reminder: be brief."}, {"role": "user", "content": "Go on."}],
        "tools": [{**WEATHER, "defer_loading": True}],
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "context_management": {"edits": []},
        "output_config": {"effort": "low"}, "metadata": {"user_id": "user_1"},
    }  # fmt: skip
    headers = {"x-api-key": server.api_key, "anthropic-version": "2023-06-01", "anthropic-beta": "oauth-2025-04-20"}
    r = httpx.post(server.url("/v1/messages?beta=true"), headers=headers, json=body, timeout=60)
    assert r.status_code == 200, r.text
    plain = {**body, "system": body["system"][1:]}
    r2 = httpx.post(server.url("/v1/messages?beta=true"), headers=headers, json=plain, timeout=60)
    usage, usage2 = r.json()["usage"], r2.json()["usage"]
    assert usage2["cache_read_input_tokens"] > 0  # the same prompt again: read from the prefix cache
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == usage2["input_tokens"] + usage2[
        "cache_read_input_tokens"]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"messages": ASK}, 400, "invalid_request_error"),  # no max_tokens
        ({"max_tokens": 4, "messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_request_error"),
        ({"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, 400,
         "invalid_request_error"),
        ({"max_tokens": 4, "messages": [{"role": "user", "content": [ORPHAN_RESULT]}]}, 400, "invalid_request_error"),
        ({"max_tokens": 4, "messages": ASK, "tools": [{**WEATHER, "input_schema": {"type": "objekt"}}],
          "tool_choice": {"type": "any"}}, 400, "invalid_request_error"),
        ({"max_tokens": 0, "messages": ASK}, 400, "invalid_request_error"),
        ({"max_tokens": 4, "messages": [{"role": "user", "content": "word " * 3000}]}, 400, "invalid_request_error"),
        ({"max_tokens": 4, "messages": ASK, "model": "claude-sonnet-4-5"}, 404, "not_found_error"),
    ],
)  # fmt: skip
def test_bad_input_gets_anthropics_envelope(server, body: dict, status: int, kind: str) -> None:
    r = httpx.post(server.url("/v1/messages"), headers={"x-api-key": server.api_key},
                   json={"model": MODEL_NAME, **body}, timeout=60)  # fmt: skip
    assert r.status_code == status, r.text
    data = r.json()
    assert data["type"] == "error" and data["error"]["type"] == kind and data["error"]["message"], data


def test_auth_errors_get_anthropics_envelope(server) -> None:
    for headers in ({}, {"x-api-key": "sk-wrong"}):
        r = httpx.post(server.url("/v1/messages"), headers=headers, json={"model": MODEL_NAME, "max_tokens": 1,
                                                                         "messages": ASK})  # fmt: skip
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.base_url, api_key="sk-wrong", max_retries=0).messages.create(
            model=MODEL_NAME, max_tokens=1, messages=ASK
        )
