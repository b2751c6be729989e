"""What each API looks like on the wire, for `lemur bench`: the path, the
request body, the headers, and what one streamed event (or a whole answer)
says: its text, its token counts, its error. Chat and completions are
OpenAI's chunk streams; the Responses API (`responses`) and Anthropic's
Messages API (`messages`) send typed events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lemur.loadtest.dataset import BenchPrompt


@dataclass(frozen=True)
class Seen:
    """What one event or whole answer carried."""

    text: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Wire:
    path: str
    body: Callable[[BenchPrompt, bool], dict[str, Any]]  # (prompt, stream)
    event: Callable[[dict[str, Any]], Seen]  # one streamed event's data
    whole: Callable[[dict[str, Any]], Seen]  # a whole (non-streamed) answer
    auth: Callable[[str], dict[str, str]] = lambda key: {"Authorization": f"Bearer {key}"}


def _error_code(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("code") or error.get("type") or "error")
    return "error"


def _chunk(data: dict[str, Any], text_of: Callable[[dict[str, Any]], str | None]) -> Seen:
    if "error" in data:
        return Seen(error=_error_code(data["error"]))
    usage = data.get("usage") or {}
    choices = data.get("choices") or []
    return Seen(text=(text_of(choices[0]) or "") if choices else "", input_tokens=usage.get("prompt_tokens"),
                output_tokens=usage.get("completion_tokens"))  # fmt: skip


def _openai_usage(data: dict[str, Any]) -> Seen:
    usage = data.get("usage") or {}
    return Seen(input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get("completion_tokens"))


def _chat_body(p: BenchPrompt, stream: bool) -> dict[str, Any]:
    body = {"messages": p.for_chat(), "max_tokens": p.max_tokens, "stream": stream}
    return {**body, "stream_options": {"include_usage": True}} if stream else body


def _completions_body(p: BenchPrompt, stream: bool) -> dict[str, Any]:
    body = {"prompt": p.for_completions(), "max_tokens": p.max_tokens, "stream": stream}
    return {**body, "stream_options": {"include_usage": True}} if stream else body


def _responses_event(data: dict[str, Any]) -> Seen:
    kind = data.get("type", "")
    if kind == "response.output_text.delta":
        return Seen(text=data.get("delta") or "")
    if kind in ("response.completed", "response.incomplete"):
        usage = (data.get("response") or {}).get("usage") or {}
        return Seen(input_tokens=usage.get("input_tokens"), output_tokens=usage.get("output_tokens"))
    if kind in ("response.failed", "error"):
        return Seen(error=_error_code((data.get("response") or {}).get("error") or data))
    return Seen()


def _responses_whole(data: dict[str, Any]) -> Seen:
    usage = data.get("usage") or {}
    return Seen(input_tokens=usage.get("input_tokens"), output_tokens=usage.get("output_tokens"))


def _messages_event(data: dict[str, Any]) -> Seen:
    kind = data.get("type", "")
    if kind == "content_block_delta":
        return Seen(text=(data.get("delta") or {}).get("text") or "")
    if kind == "message_start":
        usage = (data.get("message") or {}).get("usage") or {}
        return Seen(input_tokens=usage.get("input_tokens"))
    if kind == "message_delta":
        usage = data.get("usage") or {}
        return Seen(output_tokens=usage.get("output_tokens"))
    if kind == "error":
        return Seen(error=_error_code(data.get("error")))
    return Seen()


def _messages_whole(data: dict[str, Any]) -> Seen:
    usage = data.get("usage") or {}
    prompt = (usage.get("input_tokens") or 0) + (usage.get("cache_read_input_tokens") or 0)
    return Seen(input_tokens=prompt or None, output_tokens=usage.get("output_tokens"))


WIRES = {
    "chat": Wire("/chat/completions", _chat_body, lambda d: _chunk(d, lambda c: (c.get("delta") or {}).get("content")),
                 _openai_usage),
    "completions": Wire("/completions", _completions_body, lambda d: _chunk(d, lambda c: c.get("text")), _openai_usage),
    "responses": Wire("/responses", lambda p, stream: {"input": p.for_chat(), "max_output_tokens": p.max_tokens,
                                                       "stream": stream, "store": False},
                      _responses_event, _responses_whole),
    "messages": Wire("/messages", lambda p, stream: {"messages": p.for_chat(), "max_tokens": p.max_tokens,
                                                     "stream": stream},
                     _messages_event, _messages_whole,
                     lambda key: {"x-api-key": key, "anthropic-version": "2023-06-01"}),
}  # fmt: skip
