"""Chat prompt rendering with the selected chat template.

Precedence: `--chat-template` (a file or an inline template) wins, then the
checkpoint's own chat_template, then Lemur's built-in ChatML (the published
Lemur-chat files carry none).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from server.chat_format import LEMUR_CHATML_TEMPLATE
from server.errors import InvalidRequest


def _raise(message: str) -> None:
    raise InvalidRequest(f"chat template: {message}")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
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
    if checkpoint_template:
        return checkpoint_template, "checkpoint"
    return LEMUR_CHATML_TEMPLATE, "lemur-chatml (built in)"


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    _template: jinja2.Template
    bos_token: str
    eos_token: str

    @classmethod
    def build(cls, template: str, source: str, bos_token: str | None, eos_token: str | None) -> ChatTemplate:
        compiled = _environment().from_string(template)
        return cls(source, compiled, bos_token or "", eos_token or "")

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except InvalidRequest:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"chat template failed to render: {exc}") from exc

    def render_with_spans(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> tuple[str, list[tuple[int, int]] | None]:
        """The prompt and where each message's content lies in it. The template
        is rendered once more with a random marker in place of each content;
        None when that does not reproduce the prompt (a template that trims,
        repeats or branches on content), so the caller can fail closed."""
        prompt = self.render(messages, add_generation_prompt)
        nonce = secrets.token_hex(8)
        marks = [f"\x00{nonce}.{i}\x00" for i in range(len(messages))]
        marked = self.render([{**m, "content": k} for m, k in zip(messages, marks, strict=True)], add_generation_prompt)
        pieces: list[str] = []
        spans: list[tuple[int, int]] = []
        pos = length = 0
        for message, mark in zip(messages, marks, strict=True):
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
