"""Chat prompt rendering with the selected chat template.

Precedence: `--chat-template` (a file or an inline template) wins, then the
checkpoint's own chat_template, then Lemur's built-in ChatML (the published
Lemur-chat files carry none).
"""

from __future__ import annotations

import json
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
    """`--chat-template` takes a path to a file or the template text itself."""
    path = Path(value)
    if len(value) < 4096 and "{" not in value and path.is_file():
        return path.read_text(encoding="utf-8")
    return value


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
