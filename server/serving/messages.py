"""`/v1/messages`: an Anthropic Messages request restated as a chat request,
which the chat service runs (the same prompt rendering, grammars, limits and
tool-call parsing), answered as Anthropic's objects and events
(messages_answer.py). Errors name the Messages fields the client sent.

Claude Code's first system block (`x-anthropic-billing-header: ...`) changes
with every client version and would defeat prefix caching: it is dropped.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from lemur.server.errors import APIError, InvalidRequest
from lemur.server.protocol.messages import (
    CountTokensRequest,
    Message,
    MessagesBase,
    MessagesRequest,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from lemur.server.serving.chat import ChatService
from lemur.server.serving.context import Caller, new_object_id
from lemur.server.serving.messages_answer import MessagesAnswer
from lemur.server.serving.prompt import render_messages
from lemur.server.serving.respond import Prepared
from lemur.server.serving.restating import Restated, chat_request, renamed

ATTRIBUTION = "x-anthropic-billing-header:"
TOOL_FIELDS = {"parameters": "input_schema"}  # a chat function's field -> a Messages tool's


def _call(block: ToolUseBlock) -> dict[str, Any]:
    function = {"name": block.name, "arguments": json.dumps(block.input)}
    return {"id": block.id, "type": "function", "function": function}


class _Conversation:
    """Chat messages built from Messages turns, each with its origin."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.origin: list[str] = []
        self.calls: set[str] = set()

    def add(self, message: dict[str, Any], where: str) -> None:
        self.messages.append(message)
        self.origin.append(where)

    def user(self, message: Message, where: str) -> None:
        """Tool results become tool messages, in order; text between them, user messages."""
        text: list[str] = []
        for j, block in enumerate(message.blocks()):
            if isinstance(block, TextBlock):
                text.append(block.text)
            elif isinstance(block, ToolResultBlock):
                if text:
                    self.add({"role": "user", "content": "\n".join(text)}, where)
                    text = []
                if block.tool_use_id not in self.calls:
                    param = f"{where}.content.{j}.tool_use_id"
                    message = f"no tool_use with id {block.tool_use_id!r} comes before this tool_result"
                    raise InvalidRequest(f"{param}: {message}", param=param)
                content = ("Error: " if block.is_error else "") + block.text()
                self.add({"role": "tool", "tool_call_id": block.tool_use_id, "content": content}, where)
        if text or not message.blocks():
            self.add({"role": "user", "content": "\n".join(text)}, where)

    def assistant(self, message: Message, where: str) -> None:
        blocks = message.blocks()
        text = "\n".join(b.text for b in blocks if isinstance(b, TextBlock))
        calls = [_call(b) for b in blocks if isinstance(b, ToolUseBlock)]
        self.calls.update(call["id"] for call in calls)
        message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
        if calls:
            message["tool_calls"] = calls
        self.add(message, where)


def restate(req: MessagesBase) -> Restated:
    conversation = _Conversation()
    system = [text for text in req.system_blocks() if not text.startswith(ATTRIBUTION)]
    if system:
        conversation.add({"role": "system", "content": "\n\n".join(system)}, "system")
    for i, message in enumerate(req.messages):
        where = f"messages.{i}"
        if message.role == "assistant":
            conversation.assistant(message, where)
        elif message.role == "user":
            conversation.user(message, where)
        else:
            text = "\n".join(b.text for b in message.blocks() if isinstance(b, TextBlock))
            conversation.add({"role": "system", "content": text}, where)
    tools = [(i, t) for i, t in enumerate(req.tools or ()) if t.is_client_tool()]
    body: dict[str, Any] = {"messages": conversation.messages}
    if tools:
        body["tools"] = [_tool(t) for _, t in tools]
    body.update(_tool_choice(req, bool(tools)))
    if isinstance(req, MessagesRequest):
        body.update(_sampling(req))
    origin = [i for i, _ in tools]
    return Restated(body, conversation.origin, origin, renames={"stop": "stop_sequences"}, tool_fields=TOOL_FIELDS)


def _tool(tool: Any) -> dict[str, Any]:
    function = {"name": tool.name, "description": tool.description, "parameters": tool.input_schema}
    return {"type": "function", "function": {k: v for k, v in function.items() if v is not None}}


def _tool_choice(req: MessagesBase, has_tools: bool) -> dict[str, Any]:
    choice = req.tool_choice
    if choice is None or (not has_tools and choice.type in ("auto", "none")):
        return {}
    kind = {"auto": "auto", "any": "required", "none": "none"}.get(choice.type)
    named = {"type": "function", "function": {"name": choice.name}}
    return {"tool_choice": kind or named, "parallel_tool_calls": not choice.disable_parallel_tool_use}


def _sampling(req: MessagesRequest) -> dict[str, Any]:
    fields = {
        "model": req.model,
        "stop": req.stop_sequences or None,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "user": req.metadata.user_id if req.metadata else None,
        "ignore_eos": req.ignore_eos or None,
    }
    return {k: v for k, v in fields.items() if v is not None}


class MessagesService:
    def __init__(self, chat: ChatService) -> None:
        self.chat = chat

    def prepare(self, req: MessagesRequest, caller: Caller, convert: bool = True) -> Prepared:
        restated = restate(req)
        chat = chat_request(restated)
        rid = new_object_id("msg")
        try:
            # Anthropic's max_tokens is a cap (Claude Code asks for 32000 whatever
            # the model): the reply stops at it, --max-tokens-limit or the context's end.
            prepared = self.chat.prepare_as(chat, caller, convert, rid, max_tokens_cap=req.max_tokens)
        except APIError as exc:
            raise renamed(exc, restated) from None
        answer = MessagesAnswer(req, rid, prepared.model, prepared.answer, prepared.prompt_tokens())
        return replace(prepared, answer=answer)

    def count_tokens(self, req: CountTokensRequest) -> int:
        """The prompt's tokens, as the engine would get them (tools included)."""
        restated = restate(req)
        chat = chat_request(restated)
        self.chat.ctx.resolve_model(req.model)
        tools = chat.tools if chat.tool_choice_kind() != "none" else None
        try:
            return len(render_messages(self.chat.ctx, chat.messages, True, tools))
        except APIError as exc:
            raise renamed(exc, restated) from None
