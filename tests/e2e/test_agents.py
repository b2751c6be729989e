"""Real agent clients against the real server (untrained tiny checkpoint):
langchain-openai's tool binding and structured output, and instructor in
TOOLS mode. They get validated objects because the grammar holds the model
to the schema."""

from __future__ import annotations

import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.conftest import MODEL_NAME

pytestmark = pytest.mark.e2e


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    admin: bool


class GetWeather(BaseModel):
    """Current weather for a city."""

    city: str = Field(max_length=16)
    unit: str = Field(pattern="^(celsius|fahrenheit)$", max_length=10)


ASK = "What is the weather in Paris? And who am I?"


@pytest.fixture
def chat_model(server):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=server.url("/v1"), api_key=server.api_key, model=MODEL_NAME, max_tokens=120,
                      max_retries=0, timeout=60, seed=3)  # fmt: skip


def test_langchain_bind_tools_with_a_named_choice(chat_model) -> None:
    message = chat_model.bind_tools([GetWeather], tool_choice="GetWeather").invoke(ASK)
    assert [call["name"] for call in message.tool_calls] == ["GetWeather"], message
    args = message.tool_calls[0]["args"]
    jsonschema.validate(args, GetWeather.model_json_schema())
    assert GetWeather.model_validate(args)
    assert message.response_metadata["finish_reason"] == "tool_calls"


def test_langchain_structured_output_json_schema(chat_model) -> None:
    person = chat_model.with_structured_output(Person, method="json_schema").invoke(ASK)
    assert isinstance(person, Person)
    assert 0 <= person.age <= 120 and len(person.name) <= 12


def test_instructor_tools_mode(server) -> None:
    import instructor
    import openai

    client = instructor.from_openai(
        openai.OpenAI(base_url=server.url("/v1"), api_key=server.api_key, max_retries=0, timeout=60),
        mode=instructor.Mode.TOOLS,
    )
    person = client.chat.completions.create(model=MODEL_NAME, response_model=Person, max_retries=0, max_tokens=120,
                                            messages=[{"role": "user", "content": ASK}], seed=5)  # fmt: skip
    assert isinstance(person, Person)
    assert 0 <= person.age <= 120 and len(person.name) <= 12
