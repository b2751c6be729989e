"""Grammars for a chat request: `response_format` and `tools`/`tool_choice`
become one `StructuredSpec` the engine enforces while it samples.

- `json_schema`: a grammar converted from the schema here, with xgrammar
  (the engine's backend), honouring the engine's whitespace setting (by
  default: no free whitespace anywhere).
- `json_object`: the same, for the schema `{"type": "object"}`.
- Tool calls: an xgrammar structural tag. Each function is a tag
  `<tool_call>{"name":"f","arguments":` + its arguments' grammar + `}</tool_call>`
  (Lemur's format, lemur/chat_format.py). `required` and a named function
  allow nothing but calls; `auto` allows text, and a call once `<tool_call>`
  appears; `parallel_tool_calls: false` allows one call.

Why convert here rather than hand vLLM the schema: inside a structural tag
the engine's whitespace setting does not apply (a weak model given free
whitespace loops on it until max_tokens); xgrammar 0.2.8 lets raw control
characters into strings that have a length limit, which is not JSON (patched
below); and a bad schema becomes a 400 naming its field, never an engine
error. Conversions are cached: agents resend the same tools.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jsonschema_rs

from lemur.chat_format import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, tool_call_prefix
from lemur.server.engine import StructuredSpec
from lemur.server.errors import InvalidRequest
from lemur.server.protocol.chat import ChatCompletionRequest
from lemur.server.protocol.tools import NamedToolChoice, Tool
from lemur.server.serving.schema_checks import SchemaLimits, check_bytes, check_limits, has_finite_instance

# xgrammar 0.2.8 writes the characters of a string with min/maxLength as
# [^"\\\r\n], which admits raw control characters (invalid in JSON strings).
_LOOSE_STRING_CHAR = '[^\\"\\\\\\r\\n]'
_JSON_STRING_CHAR = '[^\\0-\\x1f\\"\\\\\\r\\n]'
# xgrammar's messages start with where in its C++ source they were raised.
_SOURCE_PREFIX = re.compile(r"\[\d{2}:\d{2}:\d{2}\]\s*|(?:/[\w.+-]+)+\.(?:cc|cpp|cxx|h|hpp|py):\d+:?\s*")


class _BadSchema(ValueError):
    """A schema that is not JSON Schema, or that the grammar backend cannot enforce."""


# The metaschemas jsonschema_rs ships; an explicit registry also stops it from
# fetching an unknown `$schema` over the network (it would, by default).
_KNOWN_ONLY = jsonschema_rs.Registry([])


def _check_schema(schema: Any) -> None:
    """Check the schema against its draft's metaschema (in Rust: 80 times
    faster than `jsonschema`'s Python, which held the GIL for a third of a
    second at 1000 properties)."""
    try:
        jsonschema_rs.meta.validate(schema, registry=_KNOWN_ONLY)
    except jsonschema_rs.ValidationError as exc:
        where = "/".join(str(part) for part in exc.instance_path)
        raise _BadSchema(f"not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message[:300]}") from None
    except jsonschema_rs.ReferencingError:
        drafts = "4, 6, 7, 2019-09 or 2020-12"
        raise _BadSchema(f"unknown $schema: use a JSON Schema draft ({drafts}) or leave it out") from None


def _convert(schema_json: str, any_whitespace: bool) -> str:
    """Check the schema and convert it to EBNF (cached below, check included:
    a resent schema costs a dictionary lookup)."""
    schema = json.loads(schema_json)
    _check_schema(schema)
    if not has_finite_instance(schema):
        raise _BadSchema("no finite JSON value follows this schema (a $ref loops back through required fields)")
    # Imported on first use: xgrammar brings torch, ~200k more objects on the
    # gateway's heap, which a server without grammar traffic should not carry.
    import xgrammar

    separators = None if any_whitespace else (",", ":")
    try:
        grammar = xgrammar.Grammar.from_json_schema(
            schema_json, any_whitespace=any_whitespace, separators=separators, strict_mode=True
        )
    except Exception as exc:  # xgrammar's own errors: unsupported keywords, bad $refs, ...
        raise _BadSchema(f"this schema cannot be enforced: {backend_message(exc)}") from None
    return str(grammar).replace(_LOOSE_STRING_CHAR, _JSON_STRING_CHAR)


def backend_message(exc: BaseException) -> str:
    """The grammar backend's reason, without its source paths and times: its
    first line, at most 300 characters."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return _SOURCE_PREFIX.sub("", lines[0] if lines else type(exc).__name__).strip()[:300]


class GrammarCache:
    """Converted schemas, remembered (agents resend the same tools): least
    recently used first out, bounded by bytes rather than entries, as a
    grammar can be 70 times its schema (--grammar-cache-mb). Shared by the
    prepare threads, hence the lock."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[tuple[str, bool], str] = OrderedDict()
        self._lock = threading.Lock()

    def has(self, key: tuple[str, bool]) -> bool:
        return key in self._entries  # one dict lookup: atomic under the GIL

    def get(self, key: tuple[str, bool]) -> str | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: tuple[str, bool], value: str) -> None:
        cost = len(key[0]) + len(value)
        if cost > self.max_bytes // 8:  # one giant schema must not flush everyone's tools
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = value
            self.size += cost
            while self.size > self.max_bytes:
                (schema, _), old = self._entries.popitem(last=False)
                self.size -= len(schema) + len(old)


class NotConverted(Exception):
    """A schema is not in the cache and this attempt may not convert it."""


def convert_cached(schema_json: str, any_whitespace: bool, cache: GrammarCache, convert: bool) -> str:
    key = (schema_json, any_whitespace)
    grammar = cache.get(key)
    if grammar is None:
        if not convert:
            raise NotConverted
        grammar = _convert(schema_json, any_whitespace)
        cache.put(key, grammar)
    return grammar


@dataclass(frozen=True)
class GrammarSettings:
    """What converting a request's schemas needs from the server."""

    any_whitespace: bool
    limits: SchemaLimits
    cache: GrammarCache
    convert: bool = True  # False: only cached conversions, else NotConverted


def schema_json(schema: Any, param: str, settings: GrammarSettings) -> str:
    """The schema as compact JSON, once it is an object within the limits
    (counted again only for a schema not converted before: the limits never
    change while a server runs)."""
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{param}: a JSON Schema must be an object", param=param)
    text = json.dumps(schema, separators=(",", ":"))  # key order kept: it is the order of the output
    if not settings.cache.has((text, settings.any_whitespace)):
        check_limits(schema, param, settings.limits)
    return text


def schema_grammar(text: str, param: str, settings: GrammarSettings) -> str:
    """EBNF for JSON that follows the schema `text`, or a 400 naming `param`
    if it is not a JSON Schema the grammar backend can enforce."""
    try:
        return convert_cached(text, settings.any_whitespace, settings.cache, settings.convert)
    except _BadSchema as exc:
        raise InvalidRequest(f"{param}: {exc}", param=param) from None


def tool_chars(tools: list[Tool] | None, settings: GrammarSettings) -> int:
    """Characters the tools add to a rendered prompt (their JSON), once each
    schema is within the limits (for /tokenize, which renders them all)."""
    sizes: list[tuple[str, int]] = []
    for i, tool in enumerate(tools or ()):
        param = f"tools.{i}.function.parameters"
        sizes.append((param, len(schema_json(tool.function.schema(), param, settings))))
        check_bytes(sizes, settings.limits)  # as it grows: no more work once over
    return sum(size for _, size in sizes) + sum(len(t.function.description or "") for t in tools or ())


def _tag(name: str, grammar: str) -> dict[str, Any]:
    content = {"type": "grammar", "grammar": grammar}
    return {"type": "tag", "begin": tool_call_prefix(name), "content": content, "end": "}" + TOOL_CALL_CLOSE}


def tool_grammar(req: ChatCompletionRequest, kind: str, grammars: dict[str, str]) -> StructuredSpec:
    """The structural tag for the tool choice `kind` (auto | required |
    named), from each tool's arguments grammar; names and choices were
    checked with the request."""
    if isinstance(req.tool_choice, NamedToolChoice):
        grammars = {req.tool_choice.function.name: grammars[req.tool_choice.function.name]}
    tags = [_tag(name, grammar) for name, grammar in grammars.items()]
    single = kind == "named" or not req.parallel_tool_calls
    if kind == "auto":
        fmt = {"type": "triggered_tags", "triggers": [TOOL_CALL_OPEN], "tags": tags, "stop_after_first": single}
    else:
        fmt = {"type": "tags_with_separator", "tags": tags, "separator": "", "at_least_one": True,
               "stop_after_first": single}  # fmt: skip
    return StructuredSpec("structural_tag", json.dumps({"type": "structural_tag", "format": fmt}), "tools")


def _callable_tools(req: ChatCompletionRequest, tool_choice: str | None) -> set[str]:
    if tool_choice in (None, "none"):
        return set()
    if isinstance(req.tool_choice, NamedToolChoice):
        return {req.tool_choice.function.name}
    return {t.function.name for t in req.tools or ()}


def structured_spec(req: ChatCompletionRequest, tool_choice: str | None,
                    settings: GrammarSettings) -> StructuredSpec | None:  # fmt: skip
    """The grammar a chat request asks for, if any. `tool_choice`: the
    request's kind of tool choice, None when it has no tools. Every schema is
    held to the limits; only those of the tools the choice can call, and the
    response format's, are checked and converted."""
    fmt, limits = req.response_format, settings.limits
    calls = tool_choice not in (None, "none")
    if calls and fmt is not None and fmt.type != "text":
        raise InvalidRequest(
            "response_format cannot be combined with tool calls; send tool_choice 'none' or leave out tools",
            param="response_format",
        )
    texts = {t.function.name: (f"tools.{i}.function.parameters", schema_json(t.function.schema(),
             f"tools.{i}.function.parameters", settings)) for i, t in enumerate(req.tools or ())}  # fmt: skip
    fmt_param = "response_format.json_schema.schema"
    fmt_text = schema_json(fmt.json_schema.schema_, fmt_param, settings) if fmt and fmt.json_schema else None
    sizes = [(param, len(text)) for param, text in texts.values()]
    check_bytes(sizes + ([(fmt_param, len(fmt_text))] if fmt_text else []), limits)
    if calls:
        callable_ = _callable_tools(req, tool_choice)
        grammars = {name: schema_grammar(text, param, settings)
                    for name, (param, text) in texts.items() if name in callable_}  # fmt: skip
        return tool_grammar(req, tool_choice, grammars)
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return StructuredSpec("grammar", schema_grammar('{"type":"object"}', "response_format", settings),
                              "response_format")  # fmt: skip
    assert fmt_text is not None  # the protocol requires a schema for json_schema
    return StructuredSpec("grammar", schema_grammar(fmt_text, fmt_param, settings), fmt_param)
