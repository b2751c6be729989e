"""OpenAI wire types shared by the endpoints (our own pydantic models)."""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    model_serializer,
    model_validator,
)

logger = logging.getLogger("lemur.protocol")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class OpenAIModel(BaseModel):
    """Request base: unknown fields are accepted (OpenAI clients keep adding
    them) and logged at debug level. Types are strict, as OpenAI's are:
    `"stream": "yes"` or `"n": "2"` is a 400, not a guess."""

    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="after")
    def _log_unknown(self) -> OpenAIModel:
        if self.model_extra:
            logger.debug("%s: ignoring unknown fields %s", type(self).__name__, sorted(self.model_extra))
        return self


MAX_NESTING = 32
SHAPE_CHECKED = "shape_checked"  # validation context: the body's JSON shape was checked already


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_json_shape(data: Any) -> str | None:
    """What is wrong with a parsed body, or None: strings with a lone surrogate
    (JSON allows "\\ud800" escapes, but no tokenizer or engine can take such
    text), or nesting deeper than MAX_NESTING (no OpenAI request needs it)."""
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    while stack:
        path, value, depth = stack.pop()
        if depth > MAX_NESTING:
            return f"{path or 'body'}: JSON nested deeper than {MAX_NESTING} levels"
        if isinstance(value, str):
            if not _is_unicode(value):
                return f"{path or 'body'}: text is not valid Unicode (lone surrogate)"
        elif isinstance(value, dict):
            for k in value:  # keys are text too: a schema's property names reach the tokenizer
                if isinstance(k, str) and not _is_unicode(k):
                    return f"{path or 'body'}: a key is not valid Unicode (lone surrogate): {ascii(k)[:80]}"
            stack.extend((f"{path}.{k}" if path else str(k), v, depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, (str, dict, list)):  # not scalars: a prompt of token ids is a long list of ints
                    stack.append((f"{path}.{i}" if path else str(i), v, depth + 1))
    return None


class RequestModel(OpenAIModel):
    """A whole request body."""

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any, info: ValidationInfo) -> Any:
        # A body restated from another API's (context SHAPE_CHECKED) holds
        # only what that API's request already passed through this check.
        problem = None if (info.context or {}).get(SHAPE_CHECKED) else check_json_shape(data)
        if problem is not None:
            raise ValueError(problem)
        if isinstance(data, dict):
            # OpenAI clients may send an explicit null for any optional field:
            # it means "the default", also where our default is not None.
            fields = cls.model_fields
            data = {k: v for k, v in data.items() if not (v is None and k in fields and fields[k].default is not None)}
        return data


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SparseResponseModel(ResponseModel):
    """A response object whose unset (None) fields are left out, not sent as
    null: streamed deltas (`{"content": "x"}`), tool-call deltas."""

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class SamplingFields(RequestModel):
    """Sampling parameters common to chat and completions."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=2**31 - 1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=128)
    stop: str | list[str] | None = None  # at most 16, each at most 256 characters
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _check_common(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 16:
            raise ValueError("stop: at most 16 stop sequences are allowed")
        if any(s == "" or len(s) > 256 for s in stops):
            raise ValueError("stop: stop sequences must be 1 to 256 characters long")
        if len(self.logit_bias or {}) > 1024:
            raise ValueError("logit_bias: at most 1024 entries are allowed")
        for key, value in (self.logit_bias or {}).items():
            if not re.fullmatch(r"-?[0-9]{1,12}", key):
                raise ValueError(f"logit_bias: key {key!r} is not a token id")
            if not -100.0 <= value <= 100.0:
                raise ValueError(f"logit_bias: value for token {key} must be in [-100, 100]")
        return self

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class PromptTokensDetails(ResponseModel):
    cached_tokens: int


class Usage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None  # when the engine reports its prefix cache

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> Usage:
        details = PromptTokensDetails(cached_tokens=cached_tokens) if cached_tokens is not None else None
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=details,
        )


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lemur"
    max_model_len: int
    # An adapter's card names its base model; the base's has none.
    parent: str | None = None


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class VersionResponse(ResponseModel):
    version: str
    vllm: str
    dtype: str  # the dtype the engine runs the model's weights in
