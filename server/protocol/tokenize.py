"""`/tokenize` and `/detokenize` types (vLLM's extension endpoints)."""

from __future__ import annotations

from pydantic import model_validator

from lemur.server.protocol.chat import ChatMessage
from lemur.server.protocol.common import RequestModel, ResponseModel
from lemur.server.protocol.tools import Tool


class TokenizeRequest(RequestModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[Tool] | None = None  # rendered as chat completions render them (with messages)
    add_generation_prompt: bool = True
    add_special_tokens: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class TokenizeResponse(ResponseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(ResponseModel):
    prompt: str
