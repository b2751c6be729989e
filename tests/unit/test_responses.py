"""The Responses API's pure parts: a request restated as chat (and errors
renamed back to its fields), and the response store on both backends (a real
PostgreSQL server, started here)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from lemur.server.errors import InvalidRequest
from lemur.server.protocol.responses import ResponsesRequest
from lemur.server.responses_store import PostgresStore, ResponseStore, SqliteStore, StoredResponse, _numbered
from lemur.server.serving.context import Caller
from lemur.server.serving.responses import ResponsesTurn, restate
from lemur.server.serving.responses_service import ResponsesService, StoreLimits
from lemur.server.serving.restating import chat_request
from tests.support.postgres import postgres_server

TOOL = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}


def turn(**fields) -> ResponsesTurn:
    return ResponsesTurn(ResponsesRequest.model_validate(fields))


def test_items_become_chat_messages_calls_joined_and_reasoning_dropped() -> None:
    restated = restate(turn(instructions="Be brief.", input=[
        {"role": "user", "content": "hi"},
        {"type": "reasoning", "summary": []},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": '{"x": "y"}'},
        {"type": "function_call_output", "call_id": "c2", "output": "two"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "one"}]},
    ]))  # fmt: skip
    roles = [m["role"] for m in restated.body["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "tool"]
    assert [c["id"] for c in restated.body["messages"][2]["tool_calls"]] == ["c1", "c2"]
    assert restated.message_origin == ["instructions", "input.0", "input.2", "input.4", "input.5"]
    assert restated.body["messages"][4]["content"] == "one"


def test_an_output_for_an_unknown_call_is_a_400_naming_it() -> None:
    with pytest.raises(InvalidRequest) as info:
        restate(turn(input=[{"role": "user", "content": "hi"}, {"type": "function_call_output", "call_id": "x",
                                                                 "output": "?"}]))  # fmt: skip
    assert info.value.param == "input.1.call_id"


def test_only_function_tools_are_offered_and_errors_name_the_responses_fields() -> None:
    restated = restate(turn(input="hi", tools=[{"type": "web_search"}, TOOL, {**TOOL, "name": "f"}],
                            tool_choice="required", max_output_tokens=5))  # fmt: skip
    assert [t["function"]["name"] for t in restated.body["tools"]] == ["f", "f"]
    assert restated.body["max_tokens"] == 5
    with pytest.raises(InvalidRequest) as info:
        chat_request(restated)
    assert info.value.param == "tools.2.name" and info.value.message.startswith("tools.2.name: ")
    assert restated.param("tools.0.function.parameters") == "tools.1.parameters"
    assert restated.param("response_format.json_schema.schema.properties") == "text.format.schema.properties"


def test_only_web_search_and_auto_means_no_tools() -> None:
    restated = restate(turn(input="hi", tools=[{"type": "web_search"}], tool_choice="auto"))
    assert "tools" not in restated.body and "tool_choice" not in restated.body


def test_ignore_eos_reaches_the_chat_request_in_both_apis() -> None:
    """`lemur bench --ignore-eos` sends vLLM's extension to every API: a load
    test of a model that ends its turns compares the same token counts."""
    from lemur.server.protocol.messages import MessagesRequest
    from lemur.server.serving import messages

    assert chat_request(restate(turn(input="hi", ignore_eos=True))).ignore_eos is True
    assert chat_request(restate(turn(input="hi"))).ignore_eos is False
    ask = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    assert chat_request(messages.restate(MessagesRequest.model_validate({**ask, "ignore_eos": True}))).ignore_eos
    assert not chat_request(messages.restate(MessagesRequest.model_validate(ask))).ignore_eos


def test_store_true_without_a_store_is_a_400() -> None:
    service = ResponsesService(chat=None, store=None, limits=StoreLimits(8, 1 << 20))  # type: ignore[arg-type]
    req = ResponsesRequest.model_validate({"input": "hi", "store": True})
    with pytest.raises(InvalidRequest, match="--responses-store none") as info:
        asyncio.run(service.begin(req, Caller("k")))
    assert info.value.param == "store"
    plain = asyncio.run(service.begin(ResponsesRequest.model_validate({"input": "hi"}), Caller("k")))
    assert plain.store is False  # no store: OpenAI's default of true cannot hold, and is not an error


def test_placeholders_are_numbered_for_postgres() -> None:
    assert _numbered("a = ? AND b = ? OR c = ?") == "a = $1 AND b = $2 OR c = $3"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    if request.param == "sqlite":
        yield lambda ttl: SqliteStore(tmp_path / "state" / "responses.sqlite3", ttl)
    else:
        with postgres_server() as url:
            yield lambda ttl: PostgresStore(url, ttl)


def stored(id_: str, owner: str = "alice", previous: StoredResponse | None = None) -> StoredResponse:
    depth = previous.depth + 1 if previous else 1
    item = {"type": "message", "role": "user", "content": id_, "id": f"msg_{id_}"}
    return StoredResponse(id_, owner, previous.id if previous else None, depth, [item], {"id": id_, "output": []})


def test_the_store_keeps_chains_by_owner_and_forgets_on_time(store_factory) -> None:
    async def scenario() -> None:
        store: ResponseStore = store_factory(3600.0)
        await store.open()
        try:
            a = stored("a")
            b = stored("b", previous=a)
            c = stored("c", previous=b)
            for s in (a, b, c, stored("z", owner="bob")):
                await store.put(s)
            assert [s.id for s in await store.chain("c", "alice")] == ["a", "b", "c"]
            assert await store.chain("c", "bob") == [] and await store.get("a", "bob") is None
            assert (await store.get("b", "alice")).input == b.input
            assert await store.bytes_of("alice") > await store.bytes_of("bob") > 0
            assert not await store.delete("a", "bob")
            assert await store.delete("a", "alice")
            assert await store.chain("c", "alice") == []  # a link is gone: so is the conversation
            store.ttl_s = 0.2
            await store.put(stored("short"))
            await asyncio.sleep(0.4)
            assert await store.get("short", "alice") is None
            assert await store.purge() == 1
        finally:
            await store.close()

    asyncio.run(scenario())


def test_sqlite_file_is_private(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "state" / "responses.sqlite3", 60)
        await store.open()
        await store.put(stored("a"))
        await store.close()

    asyncio.run(scenario())
    assert (tmp_path / "state" / "responses.sqlite3").stat().st_mode & 0o077 == 0
