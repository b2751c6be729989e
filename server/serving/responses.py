"""A Responses request (with the conversation it continues) restated as a
chat request, which the chat service runs: the same prompt rendering,
grammars, limits and tool-call parsing (responses_service.py puts it together).

Errors raised on the chat request name the Responses fields the client sent:
`messages.3` is `input.5`, `tools.0.function.parameters` is
`tools.2.parameters` when two tools of other kinds came first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from lemur.server.errors import InvalidRequest
from lemur.server.protocol.responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputItem,
    MessageItem,
    NamedFunction,
    ResponsesRequest,
    item_chars,
)
from lemur.server.responses_store import StoredResponse
from lemur.server.serving.restating import Restated


@dataclass(frozen=True)
class ResponsesTurn:
    """A Responses request with the conversation it continues (the items of
    its stored chain, oldest first), as the pipeline runs it."""

    request: ResponsesRequest
    history: tuple[InputItem, ...] = ()
    previous: StoredResponse | None = None
    store: bool = False  # keep the response once it is done
    prompt_param: ClassVar[str] = "input"

    @property
    def stream(self) -> bool:
        return self.request.stream

    def text_chars(self) -> int:
        return self.request.text_chars() + sum(item_chars(i) for i in self.history)

    def needs_grammar(self) -> bool:
        return self.request.needs_grammar()

    def model_dump(self, **kw: Any) -> dict[str, Any]:
        return self.request.model_dump(**kw)


# Chat fields that are named otherwise here, longest first.
RENAMES = {
    "response_format.json_schema.schema": "text.format.schema",
    "response_format": "text.format",
    "max_tokens": "max_output_tokens",
    "messages": "input",
}


def _items(turn: ResponsesTurn) -> list[tuple[str, InputItem]]:
    """Every item of the conversation, with the field it came from."""
    req = turn.request
    items: list[tuple[str, InputItem]] = [("previous_response_id", item) for item in turn.history]
    if isinstance(req.input, str):
        return [*items, ("input", MessageItem(role="user", content=req.input))]
    return items + [(f"input.{i}", item) for i, item in enumerate(req.input)]


def _messages(turn: ResponsesTurn) -> tuple[list[dict[str, Any]], list[str]]:
    """Chat messages for the items: consecutive calls join one assistant
    message; an output must answer a call made before it; reasoning is dropped."""
    messages: list[dict[str, Any]] = []
    origin: list[str] = []
    if turn.request.instructions:
        messages.append({"role": "system", "content": turn.request.instructions})
        origin.append("instructions")
    calls: set[str] = set()
    for where, item in _items(turn):
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": item.text()})
            origin.append(where)
        elif isinstance(item, FunctionCallItem):
            function = {"name": item.name, "arguments": item.arguments}
            call = {"id": item.call_id, "type": "function", "function": function}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and origin[-1] != "instructions":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                origin.append(where)
            calls.add(item.call_id)
        elif isinstance(item, FunctionCallOutputItem):
            if item.call_id not in calls:
                message = f"no function_call with call_id {item.call_id!r} comes before this output"
                raise InvalidRequest(f"{where}.call_id: {message}", param=f"{where}.call_id")
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
            origin.append(where)
    return messages, origin


def restate(turn: ResponsesTurn) -> Restated:
    req = turn.request
    messages, message_origin = _messages(turn)
    functions = req.function_tools()
    body: dict[str, Any] = {"messages": messages, "parallel_tool_calls": req.parallel_tool_calls}
    if functions:
        body["tools"] = [
            {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)} for _, t in functions
        ]
    if isinstance(req.tool_choice, NamedFunction):
        body["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.name}}
    elif req.tool_choice is not None and (functions or req.tool_choice != "auto"):
        body["tool_choice"] = req.tool_choice
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_schema":
        schema = {"name": fmt.name, "schema": fmt.schema_, "description": fmt.description, "strict": fmt.strict}
        schema = {k: v for k, v in schema.items() if v is not None}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt is not None:
        body["response_format"] = {"type": fmt.type}
    sampling = {
        "model": req.model,
        "max_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "user": req.user,
        "ignore_eos": req.ignore_eos or None,
    }
    body.update({k: v for k, v in sampling.items() if v is not None})
    return Restated(body, message_origin, [i for i, _ in functions], RENAMES)
