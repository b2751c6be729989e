"""How a Messages answer looks (see respond.Answer): the chat answer's
chunks and response, restated as Anthropic's content blocks and events:

    message_start
    per block: content_block_start, content_block_delta... (text_delta or
               input_json_delta), content_block_stop
    message_delta (stop_reason, stop_sequence, usage), message_stop

An error after the stream started is an `error` event in Anthropic's envelope.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from lemur.server.engine import EngineOutput
from lemur.server.errors import APIError
from lemur.server.protocol.common import Usage
from lemur.server.protocol.messages import MessageObject, MessagesRequest, MessageUsage, TextOut, ToolUseOut
from lemur.server.serving.chat import ChatAnswer
from lemur.server.serving.respond import ChoiceResult
from lemur.server.serving.sse import typed_event


def stop_reason(req: MessagesRequest, finish: str | None, stop: int | str | None) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence for a chat finish_reason and
    the engine's stop reason (the stop string that matched, if one did)."""
    if finish == "length":
        return "max_tokens", None
    if finish == "tool_calls":
        return "tool_use", None
    if isinstance(stop, str) and stop in (req.stop_sequences or ()):
        return "stop_sequence", stop
    return "end_turn", None


def message_usage(usage: Usage) -> MessageUsage:
    """Anthropic counts prompt tokens read from the cache apart: input_tokens
    plus cache_read_input_tokens is the whole prompt."""
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return MessageUsage(
        input_tokens=usage.prompt_tokens - cached, output_tokens=usage.completion_tokens, cache_read_input_tokens=cached
    )


class MessagesAnswer:
    """One message's objects and events, made from its chat answer's."""

    heartbeat = typed_event("ping")  # Anthropic's keep-alive, while a long prompt is prefilled

    def __init__(self, req: MessagesRequest, mid: str, model: str, chat: ChatAnswer, prompt_tokens: int) -> None:
        self.req, self.id, self.model, self.chat = req, mid, model, chat
        self.prompt_tokens = prompt_tokens
        self._blocks = 0  # blocks started so far
        self._open: str | None = None  # the kind of the block whose deltas are streaming
        self._finish: str | None = None
        self._stop: int | str | None = None

    def opening(self) -> str:
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 0},
        }
        return typed_event("message_start", message=message)

    def _start(self, block: dict[str, Any]) -> str:
        text = self._close()
        self._open = block["type"]
        self._blocks += 1
        return text + typed_event("content_block_start", index=self._blocks - 1, content_block=block)

    def _close(self) -> str:
        if self._open is None:
            return ""
        self._open = None
        return typed_event("content_block_stop", index=self._blocks - 1)

    def events(self, prompt_index: int, out: EngineOutput) -> str:
        if out.finish_reason is not None:
            self._stop = out.stop_reason
        delta, finish = self.chat.delta(out)
        self._finish = finish or self._finish
        if delta is None:
            return ""
        text = ""
        if delta.content:
            if self._open != "text":
                text += self._start({"type": "text", "text": ""})
            text_delta = {"type": "text_delta", "text": delta.content}
            text += typed_event("content_block_delta", index=self._blocks - 1, delta=text_delta)
        for call in delta.tool_calls or ():
            if call.id is not None:
                text += self._start({"type": "tool_use", "id": call.id, "name": call.function.name, "input": {}})
            if call.function.arguments and self._open == "tool_use":
                json_delta = {"type": "input_json_delta", "partial_json": call.function.arguments}
                text += typed_event("content_block_delta", index=self._blocks - 1, delta=json_delta)
        return text

    async def closing(self, usage: Usage) -> str:
        reason, sequence = stop_reason(self.req, self._finish, self._stop)
        totals = message_usage(usage)
        text = self._close()
        stopped = {"stop_reason": reason, "stop_sequence": sequence}
        text += typed_event("message_delta", delta=stopped, usage=totals)
        return text + typed_event("message_stop")

    def failed(self, exc: APIError) -> str:
        return self._close() + typed_event("error", error=exc.anthropic_body()["error"])

    async def finished(self, response: BaseModel) -> None:
        pass

    def response(self, results: list[list[ChoiceResult]], usage: Usage) -> MessageObject:
        result = results[0][0]
        message, finish = self.chat.message(result)
        content: list[TextOut | ToolUseOut] = []
        if message.content:
            content.append(TextOut(text=message.content))
        for call in message.tool_calls or ():
            content.append(ToolUseOut(id=call.id, name=call.function.name, input=json.loads(call.function.arguments)))
        reason, sequence = stop_reason(self.req, finish, result.stop_reason)
        usage_out = message_usage(usage)
        return MessageObject(
            id=self.id, content=content, model=self.model, stop_reason=reason, stop_sequence=sequence, usage=usage_out
        )
