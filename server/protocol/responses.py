"""`/v1/responses` request and response types (OpenAI's Responses API).

The request is held to its own shape here, so that a bad field is named as
the client wrote it (`input.2.call_id`, `tools.0.parameters`); the serving
layer then restates it as a chat request (server/serving/responses.py).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from lemur.server.protocol.common import OpenAIModel, RequestModel, ResponseModel
from lemur.server.protocol.tools import NAME_PATTERN, check_arguments

# Request: input items


class TextContent(OpenAIModel):
    """`input_text`, or `output_text` of an earlier assistant turn sent back."""

    type: Literal["input_text", "output_text"]
    text: str


class MessageItem(OpenAIModel):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[TextContent]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class FunctionCallItem(OpenAIModel):
    """A call the model made, sent back in the history."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(pattern=NAME_PATTERN)
    arguments: str
    id: str | None = None
    status: str | None = None

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        return check_arguments(value)


class FunctionCallOutputItem(OpenAIModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str | list[TextContent]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "\n".join(p.text for p in self.output)


class ReasoningItem(OpenAIModel):
    """Another model's reasoning, sent back: accepted, and left out of the prompt."""

    type: Literal["reasoning"]


def _item_kind(item: Any) -> str | None:
    if isinstance(item, dict):
        # A message may come without its type (OpenAI's "easy" input message).
        kind = item.get("type", "message" if "role" in item else None)
    else:
        kind = getattr(item, "type", None)
    return f"{kind}-item" if isinstance(kind, str) else None


# Tags that are not identifiers stay out of the field an error names ("input.0.role").
InputItem = Annotated[
    Annotated[MessageItem, Tag("message-item")]
    | Annotated[FunctionCallItem, Tag("function_call-item")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output-item")]
    | Annotated[ReasoningItem, Tag("reasoning-item")],
    Discriminator(
        _item_kind,
        custom_error_type="input_item",
        custom_error_message="an input item must be a message, function_call, function_call_output or reasoning",
    ),
]


def item_chars(item: InputItem) -> int:
    """Characters an item puts into the prompt."""
    if isinstance(item, MessageItem | FunctionCallOutputItem):
        return len(item.text())
    return len(item.arguments) if isinstance(item, FunctionCallItem) else 0


# Request: tools


class FunctionTool(OpenAIModel):
    """A function, in the Responses API's flat form."""

    type: Literal["function"]
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class OtherTool(OpenAIModel):
    """A tool kind the server cannot run (`web_search`, `file_search`,
    `namespace`, ...): accepted, as clients send them, and not offered to the model."""

    type: str


def _tool_kind(tool: Any) -> str:
    kind = tool.get("type") if isinstance(tool, dict) else getattr(tool, "type", None)
    return "function-tool" if kind == "function" else "other-tool"


ResponsesTool = Annotated[
    Annotated[FunctionTool, Tag("function-tool")] | Annotated[OtherTool, Tag("other-tool")], Discriminator(_tool_kind)
]


class NamedFunction(OpenAIModel):
    type: Literal["function"]
    name: str


class TextFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> TextFormat:
        if self.type == "json_schema" and (self.schema_ is None or self.name is None):
            raise ValueError("a json_schema format needs a name and a schema")
        return self


class TextOptions(OpenAIModel):
    format: TextFormat = Field(default_factory=TextFormat)


class ResponsesRequest(RequestModel):
    prompt_param: ClassVar[str] = "input"  # the field errors about the prompt's size name
    model: str | None = None
    input: str | list[InputItem] = Field(min_length=1)
    instructions: str | None = None
    tools: list[ResponsesTool] | None = Field(default=None, max_length=256)
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool = True
    text: TextOptions | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    store: bool | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    user: str | None = None
    stream: bool = False
    truncation: Literal["disabled"] | None = None
    ignore_eos: bool = False  # vLLM's extension, as in chat: write max_output_tokens whatever the model says

    @model_validator(mode="after")
    def _input_items(self) -> ResponsesRequest:
        kinds = (MessageItem, FunctionCallOutputItem)
        if isinstance(self.input, list) and not any(isinstance(i, kinds) for i in self.input):
            raise ValueError("input: needs at least one message or function_call_output")
        return self

    def text_chars(self) -> int:
        """Characters the prompt is made of (tools are counted by needs_grammar, which sends them off the loop)."""
        items = [len(self.input)] if isinstance(self.input, str) else [item_chars(i) for i in self.input]
        return len(self.instructions or "") + sum(items)

    def needs_grammar(self) -> bool:
        """Function tools or a JSON format: schemas to check and convert (off the event loop)."""
        return bool(self.function_tools()) or (self.text is not None and self.text.format.type != "text")

    def function_tools(self) -> list[tuple[int, FunctionTool]]:
        """The function tools with their index in `tools` (other kinds are not offered)."""
        return [(i, t) for i, t in enumerate(self.tools or ()) if isinstance(t, FunctionTool)]


# Response


class OutputText(ResponseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)  # a factory, not a default pydantic deep-copies
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(ResponseModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class OutputFunctionCall(ResponseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = OutputMessage | OutputFunctionCall


class InputTokensDetails(ResponseModel):
    cached_tokens: int = 0


class OutputTokensDetails(ResponseModel):
    reasoning_tokens: int = 0


class ResponseUsage(ResponseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(ResponseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(ResponseModel):
    code: str
    message: str


class ResponseObject(ResponseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputItem]
    instructions: str | None = None
    max_output_tokens: int | None = None
    parallel_tool_calls: bool
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: Any
    tools: list[Any]
    text: dict[str, Any]
    metadata: dict[str, str] = Field(default_factory=dict)
    store: bool = False
    truncation: Literal["disabled"] = "disabled"
    user: str | None = None
    usage: ResponseUsage | None = None
