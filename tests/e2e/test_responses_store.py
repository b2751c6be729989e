"""Stored responses on the real server, with each backend: SQLite in the
state directory (the default) and a real PostgreSQL server started here.
A `previous_response_id` chain continues across a restart; another key
finds nothing; DELETE removes; a TTL of 1 s expires.

The two backends' servers start side by side (an engine start is mostly one
core's imports): both first servers, then, once those have stopped, both
second ones."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.responses import Response

from tests.conftest import API_KEY, MODEL_NAME, SECOND_API_KEY, LiveServer, start_servers, stop_server
from tests.support.postgres import postgres_server

pytestmark = pytest.mark.e2e


@pytest.fixture()
def stores() -> Iterator[dict[str, list[str]]]:
    """Each backend's flags."""
    with postgres_server() as url:
        yield {"sqlite": ["--responses-store", "sqlite"], "postgresql": ["--responses-store", url]}


def _clients(server: LiveServer) -> tuple[openai.OpenAI, openai.OpenAI]:
    def make(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=server.url("/v1"), api_key=key, max_retries=0, timeout=60)

    return make(API_KEY), make(SECOND_API_KEY)


def _start(checkpoint: Path, where: Path, stores: dict[str, list[str]]) -> dict[str, LiveServer]:
    """A server per backend, side by side; each backend keeps its state
    directory from one start to the next."""
    launches = []
    for name, flags in stores.items():
        folder = where / name
        folder.mkdir(parents=True)
        extra = [*flags, "--state-dir", str(where.parent / f"state-{name}"), "--api-key", API_KEY]
        launches.append((folder / "server.log", extra, {"LEMUR_API_KEYS": SECOND_API_KEY}))
    return dict(zip(stores, start_servers(checkpoint, launches), strict=True))


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


def _first_turn(server: LiveServer) -> Response:
    mine, other = _clients(server)
    first = mine.responses.create(model=MODEL_NAME, input="My name is Ada.", max_output_tokens=4)
    assert first.store is True
    kept = mine.responses.retrieve(first.id)
    assert kept.id == first.id and kept.output_text == first.output_text
    [item] = mine.responses.input_items.list(first.id).data
    assert item.type == "message" and item.content[0].text == "My name is Ada."
    _others_find_nothing(other, first.id)
    return first


def _second_turn(server: LiveServer, first: Response) -> None:
    """On a new process with the same store, whose responses live 1 s."""
    mine, _ = _clients(server)
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


def _each(servers: dict[str, LiveServer], turn: Callable[..., Any], *args: dict[str, Any]) -> dict[str, Any]:
    """`turn` on each backend's server; a failure names its backend."""
    results = {}
    for name, server in servers.items():
        try:
            results[name] = turn(server, *(a[name] for a in args))
        except BaseException as exc:
            exc.add_note(f"backend: {name}")
            raise
    return results


def test_a_chain_outlives_a_restart_and_belongs_to_its_key(stores, tiny_checkpoint, tmp_path) -> None:
    servers = _start(tiny_checkpoint, tmp_path / "first", stores)
    try:
        firsts = _each(servers, _first_turn)
    finally:
        for server in servers.values():
            stop_server(server)

    # The same stores, new processes; responses made from now on live 1 s.
    servers = _start(tiny_checkpoint, tmp_path / "second", {k: [*v, "--responses-ttl", "1"] for k, v in stores.items()})
    try:
        _each(servers, _second_turn, firsts)
    finally:
        for server in servers.values():
            stop_server(server)
