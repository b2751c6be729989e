"""`/v1/responses` through the official openai SDK (`client.responses.create`
and `client.responses.stream`), on the real engine with the untrained tiny
checkpoint: its words are noise, so the checks are on shapes, on the events'
order and on what the grammar holds (a forced call's arguments)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from tests.conftest import MODEL_NAME

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 16},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}
FORCED = {"type": "function", "name": "get_weather"}
# What Codex sends beside its functions and messages (../shared/lemur-reference.md).
CODEX_EXTRAS = {
    "include": ["reasoning.encrypted_content"],
    "reasoning": {"effort": "medium", "summary": "auto"},
    "prompt_cache_key": "0193-session",
    "client_metadata": {"originator": "codex_exec"},
    "service_tier": "auto",
    "truncation": "disabled",
    "store": False,
}


def test_create_answers_with_a_message_and_usage(client) -> None:
    r = client.responses.create(model=MODEL_NAME, input="Say hello.", instructions="Be brief.", max_output_tokens=8)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == MODEL_NAME
    assert r.status in ("completed", "incomplete")
    assert (r.incomplete_details is not None) == (r.status == "incomplete")
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens"
    [message] = r.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and r.output_text == message.content[0].text
    assert 0 < r.usage.output_tokens <= 8 and r.usage.input_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens >= 0
    assert r.instructions == "Be brief." and r.max_output_tokens == 8


def test_cut_at_max_output_tokens_is_incomplete_streamed_and_not(client) -> None:
    ask = {"model": MODEL_NAME, "input": "Count to one hundred.", "max_output_tokens": 1, "temperature": 0}
    whole = client.responses.create(**ask)
    with client.responses.stream(**ask) as stream:
        events = list(stream)
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert events[-1].type == "response.incomplete"  # the terminal event matches the status
    assert events[-1].response.status == "incomplete"
    assert events[-1].response.output_text == whole.output_text  # greedy: the same token


def test_stream_events_come_in_the_spec_order(client) -> None:
    with client.responses.stream(model=MODEL_NAME, input="Tell me a story.", max_output_tokens=12) as stream:
        events = list(stream)
    final = events[-1].response  # the SDK's get_final_response() wants response.completed only
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and all(e.item_id == final.output[0].id and e.output_index == 0 for e in deltas)
    tail = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[len(kinds) - 4 : -1] == tail and kinds[-1] in ("response.completed", "response.incomplete")
    assert "".join(e.delta for e in deltas) == final.output_text
    assert final.status == kinds[-1].removeprefix("response.") and 0 < final.usage.output_tokens <= 12


def _forced_call(client, stream: bool):
    ask = {"model": MODEL_NAME, "input": "Weather in Paris?", "tools": [WEATHER], "tool_choice": FORCED,
           "max_output_tokens": 160, "temperature": 0}  # fmt: skip
    if not stream:
        return client.responses.create(**ask), None
    with client.responses.stream(**ask) as s:
        events = list(s)
    return events[-1].response, events


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_forced_call_follows_its_schema(client, stream: bool) -> None:
    response, events = _forced_call(client, stream)
    assert response.status == "completed"
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    if events is not None:
        kinds = [e.type for e in events]
        assert kinds[2] == "response.output_item.added" and events[2].item.type == "function_call"
        args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        done = next(e for e in events if e.type == "response.function_call_arguments.done")
        assert args == done.arguments == call.arguments and done.name == "get_weather"
        assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                              "response.completed"]  # fmt: skip


def test_the_tool_result_continues_the_conversation(client) -> None:
    first, _ = _forced_call(client, stream=False)
    [call] = first.output
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 21}'},
    ]
    r = client.responses.create(model=MODEL_NAME, input=history, tools=[WEATHER], max_output_tokens=8)
    assert r.status in ("completed", "incomplete") and r.output
    assert r.usage.input_tokens > first.usage.input_tokens  # the call and its result are in the prompt


def test_what_codex_sends_is_accepted(client) -> None:
    """Codex's extra fields, developer messages, and tool kinds the server
    cannot run (not offered to the model: a forced call can only be ours)."""
    other_tools = [{"type": "web_search"}, {"type": "namespace", "name": "mcp", "tools": []}]
    r = client.responses.create(
        model=MODEL_NAME,
        input=[
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: none."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        ],
        tools=[*other_tools, WEATHER],
        tool_choice="required",
        extra_body={k: v for k, v in CODEX_EXTRAS.items() if k not in ("include", "store")},
        include=CODEX_EXTRAS["include"],
        store=False,
        max_output_tokens=160,
        temperature=0,
    )
    assert r.status == "completed" and [o.type for o in r.output] == ["function_call"]
    assert r.output[0].name == "get_weather" and len(r.tools) == 3


def _post(server, body: dict) -> httpx.Response:
    return httpx.post(server.url("/v1/responses"), json=body, headers={"Authorization": f"Bearer {server.api_key}"})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}, "input.0.call_id"),
        ({"input": [{"type": "telepathy", "text": "x"}]}, "input.0"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input.0.role"),
        ({"input": "hi", "tools": [{"type": "web_search"}, {**WEATHER, "parameters": {"type": "objekt"}}],
          "tool_choice": "required"}, "tools.1.parameters"),
        ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 3}}}},
         "text.format.schema"),
        ({"input": "hi", "max_output_tokens": "many"}, "max_output_tokens"),
        ({"input": "hi", "truncation": "auto"}, "truncation"),
        ({"input": []}, "input"),
    ],
)  # fmt: skip
def test_bad_input_is_a_400_naming_the_field(server, body: dict, param: str) -> None:
    r = _post(server, {"model": MODEL_NAME, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and (error["param"] or "").startswith(param), error
