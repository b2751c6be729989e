"""How a Responses answer looks (see respond.Answer): the chat answer's
chunks and response, restated as output items and the Responses API's
events, in the spec's order:

    response.created, response.in_progress
    per message:  output_item.added, content_part.added, output_text.delta...,
                  output_text.done, content_part.done, output_item.done
    per call:     output_item.added, function_call_arguments.delta...,
                  function_call_arguments.done, output_item.done
    the end:      response.completed | response.incomplete | response.failed

Every event carries a `sequence_number`; the terminal one matches the
response's status (completed, incomplete when max_output_tokens cut it,
failed on an error mid-stream).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from lemur.server.engine import EngineOutput
from lemur.server.errors import APIError
from lemur.server.protocol.common import Usage
from lemur.server.protocol.responses import (
    IncompleteDetails,
    InputTokensDetails,
    NamedFunction,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from lemur.server.serving.chat import ChatAnswer
from lemur.server.serving.context import new_object_id
from lemur.server.serving.respond import ChoiceResult
from lemur.server.serving.sse import typed_event


def response_usage(usage: Usage) -> ResponseUsage:
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=cached),
    )


def _message(status: str, text: str) -> OutputMessage:
    return OutputMessage(id=new_object_id("msg"), status=status, content=[OutputText(text=text)])


def _call(status: str, call_id: str, name: str, arguments: str) -> OutputFunctionCall:
    return OutputFunctionCall(id=new_object_id("fc"), call_id=call_id, name=name, arguments=arguments, status=status)


def _request_echo(req: ResponsesRequest) -> dict[str, Any]:
    """The request's settings, which a response object repeats."""
    choice = req.tool_choice
    fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text else {"type": "text"}
    return {
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tool_choice": choice.model_dump() if isinstance(choice, NamedFunction) else choice or "auto",
        "tools": [t.model_dump(by_alias=True, exclude_none=True) for t in req.tools or ()],
        "text": {"format": fmt},
        "metadata": req.metadata or {},
        "user": req.user,
    }


Keep = Callable[[ResponseObject], Awaitable[bool]]


class ResponsesAnswer:
    """One response's objects and events, made from its chat answer's."""

    heartbeat = None  # the Responses API has no keep-alive event

    def __init__(self, req: ResponsesRequest, rid: str, model: str, chat: ChatAnswer, keep: Keep | None = None) -> None:
        """`keep`: stores the finished response (True if it did), when the request is to be stored."""
        self.req, self.rid, self.model, self.chat, self.keep = req, rid, model, chat, keep
        self.created_at = int(time.time())
        self._echo = _request_echo(req)
        self._sequence = 0
        self._items: list[OutputItem] = []
        self._open: OutputItem | None = None  # the item whose deltas are streaming
        self._open_at: dict[str, Any] = {}  # where its deltas go: item_id, output_index (, content_index)
        self._text: list[str] = []  # the open message's text so far
        self._finish: str | None = None

    def _object(
        self, status: str, output: list[OutputItem], usage: Usage | None = None, error: APIError | None = None
    ) -> ResponseObject:
        return ResponseObject(
            id=self.rid,
            created_at=self.created_at,
            status=status,
            model=self.model,
            output=output,
            error=ResponseError(code=error.code or error.type, message=error.message) if error else None,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            usage=response_usage(usage) if usage is not None else None,
            **self._echo,
        )

    def _event(self, kind: str, **fields: Any) -> str:
        self._sequence += 1
        return typed_event(kind, sequence_number=self._sequence - 1, **fields)

    # The stream

    def opening(self) -> str:
        started = self._object("in_progress", []).model_dump(mode="json")  # once, for both events
        return self._event("response.created", response=started) + self._event("response.in_progress", response=started)

    def _start(self, item: OutputItem) -> str:
        text = self._close("completed")
        self._items.append(item)
        self._open = item
        index = len(self._items) - 1
        text += self._event("response.output_item.added", output_index=index, item=item)
        self._open_at = {"item_id": item.id, "output_index": index}
        if isinstance(item, OutputMessage):
            self._open_at["content_index"] = 0
            self._text = []
            text += self._event("response.content_part.added", **self._open_at, part=OutputText(text=""))
        return text

    def _close(self, status: str) -> str:
        item, self._open = self._open, None
        if item is None:
            return ""
        index = len(self._items) - 1
        item.status = status
        if isinstance(item, OutputMessage):
            part = item.content[0]
            part.text = "".join(self._text)
            text = self._event("response.output_text.done", **self._open_at, text=part.text, logprobs=[])
            text += self._event("response.content_part.done", **self._open_at, part=part)
        else:
            text = self._event(
                "response.function_call_arguments.done", **self._open_at, name=item.name, arguments=item.arguments
            )
        return text + self._event("response.output_item.done", output_index=index, item=item)

    def events(self, prompt_index: int, out: EngineOutput) -> str:
        delta, finish = self.chat.delta(out)
        self._finish = finish or self._finish
        if delta is None:
            return ""
        text = ""
        if delta.content:
            if not isinstance(self._open, OutputMessage):
                text += self._start(_message("in_progress", ""))
            self._text.append(delta.content)
            text += self._event("response.output_text.delta", **self._open_at, delta=delta.content, logprobs=[])
        for call in delta.tool_calls or ():
            if call.id is not None:
                text += self._start(_call("in_progress", call.id, call.function.name or "", ""))
            if call.function.arguments and isinstance(self._open, OutputFunctionCall):
                self._open.arguments += call.function.arguments
                delta_args = call.function.arguments
                text += self._event("response.function_call_arguments.delta", **self._open_at, delta=delta_args)
        return text

    async def closing(self, usage: Usage) -> str:
        status = "incomplete" if self._finish == "length" else "completed"
        text = "" if self._items else self._start(_message("in_progress", ""))  # an empty reply is a message too
        text += self._close(status)
        final = self._object(status, self._items, usage)
        await self.finished(final)  # stored before the client hears it is done: it may continue at once
        return text + self._event(f"response.{status}", response=final)

    def failed(self, exc: APIError) -> str:
        text = self._close("incomplete")
        return text + self._event("response.failed", response=self._object("failed", self._items, error=exc))

    async def finished(self, response: BaseModel) -> None:
        assert isinstance(response, ResponseObject)
        if self.keep is not None:
            response.store = await self.keep(response)

    # The whole response

    def response(self, results: list[list[ChoiceResult]], usage: Usage) -> ResponseObject:
        message, finish = self.chat.message(results[0][0])
        status = "incomplete" if finish == "length" else "completed"
        output: list[OutputItem] = []
        if message.content or not message.tool_calls:  # an empty reply is a message too
            output.append(_message(status, message.content or ""))
        for call in message.tool_calls or ():
            output.append(_call(status, call.id, call.function.name, call.function.arguments))
        return self._object(status, output, usage)
