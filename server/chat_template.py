"""Chat prompt rendering with the selected chat template.

Precedence: `--chat-template` (a file or an inline template) wins, then the
checkpoint's own chat_template, then Lemur's built-in ChatML (the published
Lemur-chat files carry none).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lemur.chat_format import LEGACY_LEMUR_TEMPLATES, LEMUR_CHATML_TEMPLATE
from lemur.server.errors import InvalidRequest


def _raise(message: str) -> None:
    raise InvalidRequest(f"chat template: {message}")


def _tojson_filter(control_texts: tuple[str, ...]) -> Callable[..., str]:
    """transformers' `tojson`, except that its output cannot spell a control
    token: the first character of any control text inside a JSON string is
    written as a `\\uXXXX` escape (the same JSON value, different tokens).
    So tool definitions and call arguments stay data, whatever they hold."""

    def tojson(x: Any, indent: int | None = None, separators: tuple[str, str] | None = None,
               sort_keys: bool = False, ensure_ascii: bool = False) -> str:  # fmt: skip
        text = json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
        for control in control_texts:
            if control in text:
                text = text.replace(control, f"\\u{ord(control[0]):04x}{control[1:]}")
        return text

    return tojson


def _environment(control_texts: tuple[str, ...]) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["tojson"] = _tojson_filter(control_texts)
    env.globals["raise_exception"] = _raise
    return env


def load_template_arg(value: str) -> str:
    """`--chat-template` takes a path to a file or the template text itself.
    A value without any Jinja syntax is a path, and must exist: a mistyped
    path must not silently become a template that renders itself."""
    if "{" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--chat-template: no such file {value!r} (an inline template needs Jinja syntax)")
    return path.read_text(encoding="utf-8")


def select_template(override: str | None, checkpoint_template: str | None) -> tuple[str, str]:
    """Return (template, source) where source names where it came from."""
    if override:
        return load_template_arg(override), "--chat-template"
    if checkpoint_template in LEGACY_LEMUR_TEMPLATES:
        return LEMUR_CHATML_TEMPLATE, "lemur-chatml (built in; the checkpoint carries an older copy)"
    if checkpoint_template:
        return checkpoint_template, "checkpoint"
    return LEMUR_CHATML_TEMPLATE, "lemur-chatml (built in)"


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    _template: jinja2.Template
    bos_token: str
    eos_token: str
    handles_tools: bool  # the template reads the `tools` variable (transformers' convention)
    builtin: bool  # Lemur's own template, which prints every piece of JSON through tojson

    @classmethod
    def build(cls, template: str, source: str, bos_token: str | None, eos_token: str | None,
              control_texts: tuple[str, ...]) -> ChatTemplate:  # fmt: skip
        """`control_texts`: the tokenizer's control tokens, which `tojson` must never spell."""
        env = _environment(control_texts)
        handles_tools = "tools" in meta.find_undeclared_variables(env.parse(template))
        builtin = template == LEMUR_CHATML_TEMPLATE
        return cls(source, env.from_string(template), bos_token or "", eos_token or "", handles_tools, builtin)

    def render(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, tools: list[dict] | None = None
    ) -> str:
        try:
            return self._template.render(
                messages=messages,
                tools=tools or None,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except InvalidRequest:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"chat template failed to render: {exc}") from exc

    def render_with_spans(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, tools: list[dict] | None = None
    ) -> tuple[str, list[tuple[int, int]] | None]:
        """The prompt and where each message's content lies in it. The template
        is rendered once more with a random marker in place of each content;
        None when that does not reproduce the prompt (a template that trims,
        repeats or branches on content), so the caller can fail closed."""
        prompt = self.render(messages, add_generation_prompt, tools)
        nonce = secrets.token_hex(8)
        # Empty contents hold nothing to protect, and a template may branch on them: left as they are.
        marks = [f"\x00{nonce}.{i}\x00" if m["content"] else "" for i, m in enumerate(messages)]
        marked_messages = [{**m, "content": k} for m, k in zip(messages, marks, strict=True)]
        marked = self.render(marked_messages, add_generation_prompt, tools)
        pieces: list[str] = []
        spans: list[tuple[int, int]] = []
        pos = length = 0
        for message, mark in zip(messages, marks, strict=True):
            if not mark:
                continue
            at = marked.find(mark, pos)
            if at < 0 or marked.count(mark) != 1:
                return prompt, None
            pieces += [marked[pos:at], message["content"]]
            length += at - pos
            spans.append((length, length + len(message["content"])))
            length += len(message["content"])
            pos = at + len(mark)
        pieces.append(marked[pos:])
        return prompt, (spans if "".join(pieces) == prompt else None)
