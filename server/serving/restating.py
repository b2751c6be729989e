"""What the APIs that are restated as chat (Responses, Messages) share: the
chat request built from their body, and errors renamed to the fields the
client sent (`param_of` maps a chat field to the API's own)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from lemur.server.errors import APIError, InvalidRequest, validation_param
from lemur.server.protocol.chat import ChatCompletionRequest

ParamOf = Callable[[str], str]
_LEADING_PARAM = re.compile(r"^[\w.]+(?=: )")


def renamed(exc: APIError, param_of: ParamOf) -> APIError:
    """The same error, naming the field as the client sent it (in its param and message)."""
    if exc.param is not None:
        param = param_of(exc.param)
        exc.message = _LEADING_PARAM.sub(param, exc.message, count=1)
        exc.param = param
        exc.args = (exc.message,)
    return exc


def chat_request(body: dict[str, Any], param_of: ParamOf) -> ChatCompletionRequest:
    """The chat request; its validation errors as a 400 naming the API's field."""
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = (first.get("ctx") or {}).get("param") or validation_param(tuple(first["loc"])) or ""
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise renamed(InvalidRequest(f"{param}: {message}", param=param or None), param_of) from None
