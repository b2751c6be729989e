"""`/v1/completions` request and response types."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from lemur.server.protocol.common import ResponseModel, SamplingFields, Usage

Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt_param: ClassVar[str] = "prompt"  # the field errors about the prompt's size name
    prompt: Prompt
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix is not supported")
        if isinstance(self.prompt, list):
            if not self.prompt:
                raise ValueError("prompt must not be empty")
            if isinstance(self.prompt[0], str | list) and len(self.prompt) > 256:
                raise ValueError("prompt: at most 256 prompts per request")
            if any(isinstance(p, list) and not p for p in self.prompt):
                raise ValueError("prompt: token-id prompts must not be empty")
        return self

    def text_chars(self) -> int:
        return sum(len(p) for p in self.prompts() if isinstance(p, str))

    def needs_grammar(self) -> bool:
        return False

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class CompletionLogprobs(ResponseModel):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(ResponseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(ResponseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
