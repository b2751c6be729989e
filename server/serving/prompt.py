"""A chat request's prompt: messages (and tools) -> the chat template -> token ids.

Message contents are data: a control-token string in them (`<|im_end|>`,
`</s>`, ...) stays text, so no message can forge a turn; only the template's
own markers are control tokens. Tool definitions and call arguments reach the
template as JSON, through a `tojson` that cannot spell a control token
(server/chat_template.py). The template adds `<s>` itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from lemur.server.errors import InvalidRequest
from lemur.server.protocol.chat import ChatMessage
from lemur.server.protocol.tools import Tool
from lemur.server.serving.context import ServingContext


def template_turns(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the template sees them (transformers' conventions): calls
    with their arguments parsed, and each tool result with its call's id and
    function name."""
    names: dict[str, str] = {}
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        turn: dict[str, Any] = {"role": m.template_role(), "content": m.text()}
        if m.tool_calls:
            turn["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.function.name, "arguments": json.loads(c.function.arguments)}}
                for c in m.tool_calls
            ]  # fmt: skip
            names.update((c.id, c.function.name) for c in m.tool_calls)
        if m.tool_call_id is not None:
            if m.tool_call_id not in names:
                raise InvalidRequest(
                    f"messages.{i}.tool_call_id: no earlier assistant message made a tool call with id "
                    f"{m.tool_call_id!r}",
                    param=f"messages.{i}.tool_call_id",
                )
            turn["tool_call_id"], turn["name"] = m.tool_call_id, names[m.tool_call_id]
        turns.append(turn)
    return turns


def _check_tool_json(ctx: ServingContext, turns: list[dict[str, Any]], tools: list[dict] | None) -> None:
    """Another template might print tool JSON raw, where control-token text
    would become control tokens: refuse it there rather than guess."""
    if ctx.template.builtin:
        return
    calls = [t["tool_calls"] for t in turns if "tool_calls" in t]
    if (tools or calls) and ctx.tokenizer.has_control_text(json.dumps([tools, calls], ensure_ascii=False)):
        raise InvalidRequest("tools or tool calls contain control-token text, which this chat template cannot escape")


def render_messages(
    ctx: ServingContext, messages: Sequence[ChatMessage], add_generation_prompt: bool, tools: list[Tool] | None = None
) -> list[int]:
    """Token ids of the prompt."""
    tool_dicts = [t.model_dump(exclude_none=True, by_alias=True) for t in tools] if tools else None
    if tool_dicts and not ctx.template.handles_tools:
        raise InvalidRequest(f"this model's chat template ({ctx.template.source}) does not render tools", param="tools")
    turns = template_turns(messages)
    _check_tool_json(ctx, turns, tool_dicts)
    if not any(ctx.tokenizer.has_control_text(t["content"]) for t in turns):
        # Nothing in the contents could become a control token: tokenize whole (the fast path).
        prompt = ctx.template.render(turns, add_generation_prompt, tool_dicts)
        return ctx.tokenizer.encode(prompt, add_special_tokens=False)
    prompt, spans = ctx.template.render_with_spans(turns, add_generation_prompt, tool_dicts)
    if spans is None:
        # This template transforms contents, so we cannot tell where they are;
        # refuse what would turn into control tokens rather than guess.
        raise InvalidRequest("message content contains control-token text, which this chat template cannot escape")
    return ctx.tokenizer.encode_prompt(prompt, spans)
