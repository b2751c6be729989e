"""Agent clients as shipped, against `lemur serve` on a checkpoint crafted to
end its turns (lemur.training.tiny.build_turn_ender) with a 32k context: the
OpenAI Agents SDK on the Responses API. A forced first turn calls the tool
(the grammar holds its arguments); the replies that follow end at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field

from tests.conftest import API_KEY, LiveServer, start_server, stop_server

pytestmark = pytest.mark.e2e
CONTEXT = 32768
MODEL = "lemur-tiny-turn-ender"


@pytest.fixture(scope="module")
def ender(turn_ender_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("ender") / "server.log"
    server = start_server(turn_ender_checkpoint, log, ["--api-key", API_KEY, "--max-model-len", str(CONTEXT),
                                                       "--served-model-name", MODEL])  # fmt: skip
    yield server
    stop_server(server)


def test_openai_agents_runner_with_a_function_tool_runs_to_the_end(ender: LiveServer) -> None:
    """The SDK runs the call, sends the result back, resets tool_choice to
    auto, and the empty reply that follows ends the run. Tracing is off: it
    would upload to OpenAI."""
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    calls: list[tuple[str, str]] = []

    @function_tool
    def get_weather(city: Annotated[str, Field(max_length=16)], unit: Literal["celsius", "fahrenheit"]) -> str:
        """Current weather for a city."""
        calls.append((city, unit))
        return f"21 degrees {unit} in {city}"

    client = AsyncOpenAI(base_url=ender.url("/v1"), api_key=ender.api_key, max_retries=0, timeout=60)
    agent = Agent(
        name="weather",
        instructions="Answer with the weather.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=MODEL, openai_client=client),
        model_settings=ModelSettings(tool_choice="required", temperature=0),
    )
    result = asyncio.run(Runner.run(agent, "What is the weather in Paris?", max_turns=4))
    assert len(calls) == 1 and calls[0][1] in ("celsius", "fahrenheit") and len(calls[0][0]) <= 16
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"], kinds
    assert result.final_output == ""
