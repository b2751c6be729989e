"""`/v1/messages` request and response types (Anthropic's Messages API, as
Claude Code and the `anthropic` SDKs speak it).

Held to its own shape here, so that a bad field is named as the client wrote
it; the serving layer restates it as chat (server/serving/messages.py).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    field_validator,
    model_serializer,
    model_validator,
)

from lemur.server.protocol.common import OpenAIModel, RequestModel, ResponseModel
from lemur.server.protocol.tools import NAME_PATTERN, object_schema

# Request: content blocks


class TextBlock(OpenAIModel):
    type: Literal["text"]
    text: str


class ToolUseBlock(OpenAIModel):
    """A call the model made, sent back in the history."""

    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(pattern=NAME_PATTERN)
    input: dict[str, Any]


class ToolResultBlock(OpenAIModel):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: str | list[TextBlock] = ""
    is_error: bool = False

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(b.text for b in self.content)


class ThinkingBlock(OpenAIModel):
    """Another model's thinking, sent back: accepted, and left out of the prompt."""

    type: Literal["thinking", "redacted_thinking"]


class UnsupportedBlock(OpenAIModel):
    type: str

    @model_validator(mode="after")
    def _refuse(self) -> UnsupportedBlock:
        raise ValueError(f"{self.type} blocks are not supported: Lemur reads text, tool_use and tool_result only")


def _block_kind(block: Any) -> str:
    kind = block.get("type") if isinstance(block, dict) else getattr(block, "type", None)
    known = {"text", "tool_use", "tool_result", "thinking", "redacted_thinking"}
    return f"{kind}-block" if kind in known else "other-block"


# Tags that are not identifiers stay out of the field an error names ("messages.0.content.1.id").
ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text-block")]
    | Annotated[ToolUseBlock, Tag("tool_use-block")]
    | Annotated[ToolResultBlock, Tag("tool_result-block")]
    | Annotated[ThinkingBlock, Tag("thinking-block")]
    | Annotated[ThinkingBlock, Tag("redacted_thinking-block")]
    | Annotated[UnsupportedBlock, Tag("other-block")],
    Discriminator(_block_kind),
]


class Message(OpenAIModel):
    # Claude Code also sends `system` messages mid-conversation.
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]

    def blocks(self) -> list[Any]:
        return [TextBlock(type="text", text=self.content)] if isinstance(self.content, str) else list(self.content)


class Tool(OpenAIModel):
    """A client tool. Server tools (a `type` such as `web_search_20250305`) are
    accepted and not offered to the model."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None

    @field_validator("input_schema")
    @classmethod
    def _an_object(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return object_schema(value)

    def is_client_tool(self) -> bool:
        return self.type in (None, "custom")


class ToolChoice(OpenAIModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False

    @model_validator(mode="after")
    def _name_for_tool(self) -> ToolChoice:
        if (self.type == "tool") != (self.name is not None):
            raise ValueError("name is required with type tool, and only then")
        return self


class Metadata(OpenAIModel):
    user_id: str | None = None


class MessagesBase(RequestModel):
    prompt_param: ClassVar[str] = "messages"  # the field errors about the prompt's size name

    model: str
    messages: list[Message] = Field(min_length=1, max_length=2048)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = Field(default=None, max_length=256)
    tool_choice: ToolChoice | None = None

    def system_blocks(self) -> list[str]:
        if self.system is None:
            return []
        return [self.system] if isinstance(self.system, str) else [b.text for b in self.system]

    def client_tools(self) -> list[Tool]:
        return [t for t in self.tools or () if t.is_client_tool()]

    def text_chars(self) -> int:
        """Characters the prompt is made of (tools are counted by needs_grammar, which sends them off the loop)."""
        chars = sum(len(s) for s in self.system_blocks())
        for message in self.messages:
            for block in message.blocks():
                if isinstance(block, TextBlock):
                    chars += len(block.text)
                elif isinstance(block, ToolResultBlock):
                    chars += len(block.text())
                elif isinstance(block, ToolUseBlock):
                    chars += len(str(block.input))
        return chars

    def tool_chars(self) -> int:
        """Characters the client tools add to the prompt (their JSON)."""
        return sum(len(json.dumps(t.input_schema or {})) + len(t.description or "") for t in self.client_tools())

    def needs_grammar(self) -> bool:
        return bool(self.client_tools())


class MessagesRequest(MessagesBase):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=16)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: Metadata | None = None
    stream: bool = False
    ignore_eos: bool = False  # vLLM's extension, as in chat: write max_tokens whatever the model says (load tests)


class CountTokensRequest(MessagesBase):
    """`/v1/messages/count_tokens`: the same prompt, nothing generated."""


# Response


class TextOut(ResponseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseOut(ResponseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class MessageUsage(ResponseModel):
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


class MessageObject(ResponseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[TextOut | ToolUseOut]
    model: str
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] | None
    stop_sequence: str | None = None
    usage: MessageUsage

    @model_serializer(mode="wrap")
    def _keep_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Anthropic always sends these, null when unset (whole answers are
        # written without nulls elsewhere).
        return {**handler(self), "stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence}


class TokenCount(ResponseModel):
    input_tokens: int
