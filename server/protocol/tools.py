"""OpenAI's tool-calling and structured-output wire types (chat completions)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lemur.server.protocol.common import OpenAIModel, ResponseModel, SparseResponseModel, check_json_shape

# OpenAI's rule for function and schema names.
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def object_schema(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A tool's arguments schema: arguments are a JSON object (OpenAI's rule,
    and Lemur's format): a call whose arguments were anything else could not
    be sent back in the history."""
    if value is not None and value.get("type", "object") != "object":
        raise ValueError('must be a JSON Schema of type "object"')
    return value


class FunctionDefinition(OpenAIModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _an_object(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return object_schema(value)

    def schema(self) -> dict[str, Any]:
        """The arguments' JSON Schema; no parameters means an empty object."""
        if not self.parameters:
            return {"type": "object", "properties": {}, "additionalProperties": False}
        return {"type": "object", **self.parameters}


class Tool(OpenAIModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(OpenAIModel):
    name: str


class NamedToolChoice(OpenAIModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


def check_arguments(value: str) -> str:
    """A call's arguments: a JSON object encoded as a string (OpenAI's shape;
    Lemur's format needs an object)."""
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        raise ValueError("must be a JSON object encoded as a string") from None
    if not isinstance(parsed, dict):
        raise ValueError("must be a JSON object encoded as a string")
    problem = check_json_shape(parsed)  # its escapes may hide a lone surrogate ("\\ud800")
    if problem is not None:
        raise ValueError(f"the encoded object: {problem}")
    return value


class FunctionCall(OpenAIModel):
    name: str = Field(pattern=NAME_PATTERN)
    arguments: str

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        return check_arguments(value)


class ToolCall(OpenAIModel):
    """A call in an assistant message of the history."""

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"]
    function: FunctionCall


class JsonSchema(OpenAIModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required when type is 'json_schema'")
        return self


# Responses


class ResponseFunctionCall(ResponseModel):
    name: str
    arguments: str


class ResponseToolCall(ResponseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall


class DeltaFunctionCall(SparseResponseModel):
    name: str | None = None
    arguments: str


class DeltaToolCall(SparseResponseModel):
    """A streamed call: the first delta has id, type and name, later ones argument text."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall
