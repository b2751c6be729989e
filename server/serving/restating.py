"""What the APIs that are restated as chat (Responses, Messages) share: the
restated body with where each part came from, the chat request built from
it, and errors renamed to the fields the client sent."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from lemur.server.errors import APIError, InvalidRequest, validation_param
from lemur.server.protocol.chat import ChatCompletionRequest
from lemur.server.protocol.common import SHAPE_CHECKED

_LEADING_PARAM = re.compile(r"^[\w.]+(?=: )")


@dataclass
class Restated:
    """Another API's request as a chat body, and the API's own field that each
    chat message and tool came from."""

    body: dict[str, Any]
    message_origin: list[str]  # "input.3", "messages.2", "instructions", "system", ...
    tool_origin: list[int]  # index in the API's `tools` (tools it cannot run are left out)
    renames: dict[str, str] = field(default_factory=dict)  # chat field (and below) -> the API's; longest first
    tool_fields: dict[str, str] = field(default_factory=dict)  # a function's field -> the API's tool field

    def param(self, chat_param: str) -> str:
        """The API's field that a chat field came from."""
        head, _, rest = chat_param.partition(".")
        index, _, tail = rest.partition(".")
        if head == "messages" and index.isdigit():
            return self.message_origin[int(index)]
        if head == "tools" and index.isdigit():
            first, dot, more = tail.removeprefix("function.").partition(".")
            name = self.tool_fields.get(first, first) + dot + more
            return f"tools.{self.tool_origin[int(index)]}" + (f".{name}" if name else "")
        for chat, own in self.renames.items():
            if chat_param == chat or chat_param.startswith(chat + "."):
                return own + chat_param[len(chat) :]
        return chat_param


def renamed(exc: APIError, restated: Restated) -> APIError:
    """The same error, naming the field as the client sent it (in its param and message)."""
    if exc.param is not None:
        param = restated.param(exc.param)
        exc.message = _LEADING_PARAM.sub(param, exc.message, count=1)
        exc.param = param
        exc.args = (exc.message,)
    return exc


def chat_request(restated: Restated) -> ChatCompletionRequest:
    """The chat request; its validation errors as a 400 naming the API's field."""
    try:
        return ChatCompletionRequest.model_validate(restated.body, context={SHAPE_CHECKED: True})
    except ValidationError as exc:
        first = exc.errors()[0]
        param = (first.get("ctx") or {}).get("param") or validation_param(tuple(first["loc"])) or ""
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise renamed(InvalidRequest(f"{param}: {message}", param=param or None), restated) from None
