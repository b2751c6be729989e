"""Stored responses on the real server, with each backend: SQLite in the
state directory (the default) and a real PostgreSQL server started here.
A `previous_response_id` chain continues across a restart; another key
finds nothing; DELETE removes; a TTL of 1 s expires."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import API_KEY, MODEL_NAME, SECOND_API_KEY, start_server, stop_server
from tests.support.postgres import postgres_server

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["sqlite", "postgresql"])
def store_flags(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    if request.param == "sqlite":
        yield ["--responses-store", "sqlite"]
    else:
        with postgres_server() as url:
            yield ["--responses-store", url]


def _clients(server) -> tuple[openai.OpenAI, openai.OpenAI]:
    def make(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=server.url("/v1"), api_key=key, max_retries=0, timeout=60)

    return make(API_KEY), make(SECOND_API_KEY)


def _start(checkpoint: Path, folder: Path, flags: list[str]):
    folder.mkdir()
    extra = [*flags, "--state-dir", str(folder.parent / "state"), "--api-key", API_KEY]
    return start_server(checkpoint, folder / "server.log", extra, env={"LEMUR_API_KEYS": SECOND_API_KEY})


def _others_find_nothing(other: openai.OpenAI, response_id: str) -> None:
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(response_id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(response_id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(response_id)
    with pytest.raises(openai.NotFoundError) as info:
        other.responses.create(model=MODEL_NAME, input="hi", previous_response_id=response_id, max_output_tokens=2)
    assert info.value.body["param"] == "previous_response_id"


def test_a_chain_outlives_a_restart_and_belongs_to_its_key(store_flags, tiny_checkpoint, tmp_path) -> None:
    server = _start(tiny_checkpoint, tmp_path / "first", store_flags)
    try:
        mine, other = _clients(server)
        first = mine.responses.create(model=MODEL_NAME, input="My name is Ada.", max_output_tokens=4)
        assert first.store is True
        kept = mine.responses.retrieve(first.id)
        assert kept.id == first.id and kept.output_text == first.output_text
        [item] = mine.responses.input_items.list(first.id).data
        assert item.type == "message" and item.content[0].text == "My name is Ada."
        _others_find_nothing(other, first.id)
    finally:
        stop_server(server)

    # The same store, a new process; responses made from now on live 1 s.
    server = _start(tiny_checkpoint, tmp_path / "second", [*store_flags, "--responses-ttl", "1"])
    try:
        mine, other = _clients(server)
        ask = {"model": MODEL_NAME, "input": "What is my name?", "max_output_tokens": 4}
        alone = mine.responses.create(**ask, store=False)
        second = mine.responses.create(**ask, previous_response_id=first.id)
        assert second.previous_response_id == first.id
        # The first turn (its input and its answer) is in the prompt.
        assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
        with pytest.raises(openai.NotFoundError):
            mine.responses.retrieve(alone.id)  # store: false keeps nothing

        time.sleep(1.5)
        with pytest.raises(openai.NotFoundError):
            mine.responses.retrieve(second.id)
        with pytest.raises(openai.NotFoundError):
            mine.responses.create(**ask, previous_response_id=second.id)

        deleted = mine.responses.delete(first.id)
        assert deleted is None or getattr(deleted, "deleted", True)
        with pytest.raises(openai.NotFoundError):
            mine.responses.retrieve(first.id)
    finally:
        stop_server(server)
