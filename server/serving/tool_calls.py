"""Tool calls out of generated text, incrementally.

The model writes Lemur's format (lemur/chat_format.py):
`text <tool_call>{"name":"f","arguments":{...}}</tool_call>...`. The parser
takes the text delta by delta and says what a client should see: content
(never the markup), the start of each call (its id and name) and fragments
of its arguments. The arguments are scanned as JSON (strings, escapes,
nesting), so a `}` or `</tool_call>` inside a string is just text, and each
character is looked at once: work is proportional to the new text. Only what
could still turn out to be markup is kept back (a partial `<tool_call>`, a
call's head until its name is complete). The same parser reads a whole reply
at once for a non-streamed response.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from lemur.chat_format import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

# A call's head, up to its arguments: `{"name": "<name>", "arguments": `.
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')
# Text longer than this where a head or a closing tag should be is not a call.
_MAX_MARKUP = 256


@dataclass
class Call:
    id: str
    name: str
    arguments: str = ""
    complete: bool = False  # its arguments are a whole JSON value


@dataclass
class Step:
    """What one piece of text contributed: content, and per call index the
    call's start (a new `Call`) and/or argument text."""

    content: str = ""
    started: list[int] = field(default_factory=list)
    arguments: dict[int, str] = field(default_factory=dict)

    def add_arguments(self, index: int, text: str) -> None:
        if text:
            self.arguments[index] = self.arguments.get(index, "") + text

    def extend(self, other: Step) -> None:
        self.content += other.content
        self.started += other.started
        for index, text in other.arguments.items():
            self.add_arguments(index, text)

    def empty(self) -> bool:
        return not (self.content or self.started or self.arguments)


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class _JsonValueEnd:
    """Finds where one JSON value ends, fed piece by piece."""

    def __init__(self) -> None:
        self.depth = 0
        self.started = False
        self.in_string = False
        self.escaped = False

    def scan(self, text: str) -> int | None:
        """The index in `text` just past the end of the value, or None if it goes on."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
                    if self.depth == 0:
                        return i + 1  # a string value
            elif ch in "{[":
                self.depth += 1
                self.started = True
            elif ch in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    return i + 1
            elif ch == '"':
                self.in_string = True
                self.started = True
            elif self.depth == 0 and self.started and (ch in ",}" or ch.isspace()):
                return i  # the end of a number or literal
            elif not ch.isspace():
                self.started = True
        return None


class ToolCallParser:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._state = "text"  # text | head | arguments | close
        self._pending = ""  # text not yet given out
        self._value = _JsonValueEnd()

    def feed(self, text: str) -> Step:
        step = Step()
        self._pending += text
        while getattr(self, f"_{self._state}")(step):
            pass
        return step

    def finish(self) -> Step:
        """The end of the output: what was kept back goes out as content
        (an unfinished call stays as it is: incomplete)."""
        step = Step()
        if self._state in ("text", "head"):
            step.content += (TOOL_CALL_OPEN if self._state == "head" else "") + self._pending
        self._pending, self._state = "", "text"
        return step

    def all_complete(self) -> bool:
        return all(c.complete for c in self.calls)

    # One method per state; each returns True while there may be another transition.
    def _text(self, step: Step) -> bool:
        at = self._pending.find(TOOL_CALL_OPEN)
        if at < 0:
            keep = _partial_suffix(self._pending, TOOL_CALL_OPEN)
            step.content += self._pending[: len(self._pending) - keep]
            self._pending = self._pending[len(self._pending) - keep :]
            return False
        step.content += self._pending[:at]
        self._pending, self._state = self._pending[at + len(TOOL_CALL_OPEN) :], "head"
        return True

    def _head(self, step: Step) -> bool:
        match = _HEAD.match(self._pending)
        name = _json_string(match.group(1)) if match else None
        if name is None:
            if match or len(self._pending) > _MAX_MARKUP or TOOL_CALL_CLOSE in self._pending:
                # Not a call: the tag is text, and parsing goes on right after it.
                step.content += TOOL_CALL_OPEN
                self._state = "text"
                return True
            return False
        self.calls.append(Call(f"call_{os.urandom(12).hex()}", name))
        step.started.append(len(self.calls) - 1)
        self._pending, self._state, self._value = self._pending[match.end() :], "arguments", _JsonValueEnd()
        return True

    def _arguments(self, step: Step) -> bool:
        end = self._value.scan(self._pending)
        piece = self._pending if end is None else self._pending[:end]
        call = self.calls[-1]
        if not call.arguments:
            piece = piece.lstrip()
        call.arguments += piece
        step.add_arguments(len(self.calls) - 1, piece)
        if end is None:
            self._pending = ""
            return False
        call.complete = True
        self._pending, self._state = self._pending[end:], "close"
        return True

    def _close(self, step: Step) -> bool:
        """After the arguments: the call's `}` and `</tool_call>` (dropped)."""
        at = self._pending.find(TOOL_CALL_CLOSE)
        if at < 0:
            if len(self._pending) > _MAX_MARKUP:  # no closing tag after all: back to text
                self._pending, self._state = self._pending.lstrip().removeprefix("}"), "text"
                return True
            return False
        self._pending, self._state = self._pending[at + len(TOOL_CALL_CLOSE) :], "text"
        return True


def _json_string(literal: str) -> str | None:
    try:
        return json.loads(literal)
    except ValueError:
        return None
