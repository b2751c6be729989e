"""`/v1/chat/completions` request and response types."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from lemur.server.protocol.common import OpenAIModel, ResponseModel, SamplingFields, SparseResponseModel, Usage
from lemur.server.protocol.tools import (
    DeltaToolCall,
    NamedToolChoice,
    ResponseFormat,
    ResponseToolCall,
    Tool,
    ToolCall,
    ToolChoice,
)


class TextPart(OpenAIModel):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIModel):
    # "developer" is OpenAI's newer name for the system role.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant messages
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=256)  # tool messages

    @model_validator(mode="after")
    def _fields_for_role(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"content is required for {self.role} messages" + (
                " without tool_calls" if self.role == "assistant" else ""))  # fmt: skip
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("tool_calls is only allowed in assistant messages")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("tool_call_id is required for tool messages")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("tool_call_id is only allowed in tool messages")
        return self

    def text(self) -> str:
        """Content as one string; text parts are joined with newlines."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)

    def template_role(self) -> str:
        return "system" if self.role == "developer" else self.role


class ChatCompletionRequest(SamplingFields):
    prompt_param: ClassVar[str] = "messages"  # the field errors about the prompt's size name
    messages: list[ChatMessage] = Field(min_length=1, max_length=2048)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="before")
    @classmethod
    def _refuse_legacy_functions(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in (("functions", "tools"), ("function_call", "tool_choice")):
                if data.get(old) is not None:
                    raise PydanticCustomError(
                        "deprecated", f"{old} is deprecated and not supported: use {new}", {"param": old}
                    )
        return data

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        self._check_tools()
        return self

    def _check_tools(self) -> None:
        names = [t.function.name for t in self.tools or ()]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise PydanticCustomError("duplicate", f"two tools are named {name!r}",
                                          {"param": f"tools.{i}.function.name"})  # fmt: skip
        choice = self.tool_choice
        if choice is not None and choice != "none" and not names:
            kind = choice if isinstance(choice, str) else "a named function"
            raise PydanticCustomError("needs_tools", f"tool_choice {kind} needs tools", {"param": "tool_choice"})
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise PydanticCustomError("unknown_function", f"tool_choice names {choice.function.name!r}, which is "
                                      "not among the tools", {"param": "tool_choice"})  # fmt: skip

    def tool_choice_kind(self) -> str:
        """none | auto | required | named (OpenAI's default: auto with tools, none without)."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return "named"
        return self.tool_choice or ("auto" if self.tools else "none")

    def text_chars(self) -> int:
        """Characters the prompt is made of: contents and call arguments (tool
        definitions are counted by needs_grammar, which sends them off the loop)."""
        chars = sum(len(m.text()) for m in self.messages)
        return chars + sum(len(c.function.arguments) for m in self.messages for c in m.tool_calls or ())

    def needs_grammar(self) -> bool:
        """Tools or a JSON response format: schemas to check and convert (off the event loop)."""
        return bool(self.tools) or (self.response_format is not None and self.response_format.type != "text")

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(ResponseModel):
    content: list[ChatTokenLogprob] | None = None


class ChatResponseMessage(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ResponseToolCall] | None = None

    @model_serializer(mode="wrap")
    def _calls_only_when_present(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if out.get("tool_calls") is None:
            out.pop("tool_calls", None)
        return out


class ChatChoice(ResponseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(ResponseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(SparseResponseModel):
    """Only the fields a chunk carries: `{"role": ..., "content": ""}` first, then `{"content": ...}`."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(ResponseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
