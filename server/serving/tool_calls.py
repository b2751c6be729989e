"""Tool calls out of generated text, incrementally.

The model writes Lemur's format (server/chat_format.py):
`text <tool_call>{"name":"f","arguments":{...}}</tool_call>...`. The parser
takes the text delta by delta and says what a client should see: content
(never the markup), the start of each call (its id and name) and fragments
of its arguments. Each step does work in proportion to the new text: it
keeps back only what could still turn out to be markup (a partial
`<tool_call>`, or the `}` that may close the call), never the whole output.
The same parser reads a whole reply at once for a non-streamed response.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from server.chat_format import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

# A call's head, up to its arguments: `{"name": "<name>", "arguments": `.
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')
# A head longer than this without matching is not a call: it is text.
_MAX_HEAD = 256


@dataclass
class Call:
    id: str
    name: str
    arguments: str = ""
    complete: bool = False


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


def _args_end(pending: str) -> int:
    """How much of `pending` is surely argument text: all of it, except from
    a last `}` after which only a possible `</tool_call>` follows."""
    brace = pending.rfind("}")
    if brace >= 0 and TOOL_CALL_CLOSE.startswith(pending[brace + 1 :].lstrip()):
        return brace
    return len(pending)


class ToolCallParser:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._state = "text"  # text | head | arguments
        self._pending = ""  # text not yet given out

    def feed(self, text: str) -> Step:
        step = Step()
        self._pending += text
        while self._advance(step):
            pass
        return step

    def finish(self) -> Step:
        """The end of the output: whatever was kept back goes out as it is."""
        step = Step()
        if self._state == "arguments":
            self._give_arguments(step, len(self._pending))
        elif self._state == "head":  # a `<tool_call>` that never became a call is text
            step.content += TOOL_CALL_OPEN + self._pending
        else:
            step.content += self._pending
        self._pending, self._state = "", "text"
        return step

    def _advance(self, step: Step) -> bool:
        """One transition; True while there may be another."""
        if self._state == "text":
            at = self._pending.find(TOOL_CALL_OPEN)
            if at < 0:
                keep = _partial_suffix(self._pending, TOOL_CALL_OPEN)
                step.content += self._pending[: len(self._pending) - keep]
                self._pending = self._pending[len(self._pending) - keep :]
                return False
            step.content += self._pending[:at]
            self._pending, self._state = self._pending[at + len(TOOL_CALL_OPEN) :], "head"
            return True
        if self._state == "head":
            match = _HEAD.match(self._pending)
            if match is None:
                if len(self._pending) > _MAX_HEAD or TOOL_CALL_CLOSE in self._pending:
                    step.content += TOOL_CALL_OPEN + self._pending
                    self._pending, self._state = "", "text"
                return False
            self.calls.append(Call(f"call_{uuid.uuid4().hex[:24]}", json.loads(match.group(1))))
            step.started.append(len(self.calls) - 1)
            self._pending, self._state = self._pending[match.end() :], "arguments"
            return True
        close = self._pending.find(TOOL_CALL_CLOSE)
        if close < 0:
            self._give_arguments(step, _args_end(self._pending))
            return False
        rest = self._pending[close + len(TOOL_CALL_CLOSE) :]
        body = self._pending[:close].rstrip()
        self._give_arguments(step, len(body) - 1 if body.endswith("}") else len(body))
        self.calls[-1].complete = True
        self._pending, self._state = rest, "text"
        return True

    def _give_arguments(self, step: Step, upto: int) -> None:
        piece = self._pending[:upto]
        if not self.calls[-1].arguments:
            piece = piece.lstrip()
        self.calls[-1].arguments += piece
        step.add_arguments(len(self.calls) - 1, piece)
        self._pending = self._pending[upto:]
