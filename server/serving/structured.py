"""Grammars for a chat request: `response_format` and `tools`/`tool_choice`
become one `StructuredSpec` the engine enforces while it samples.

- `json_schema`: a grammar converted from the schema here, with xgrammar
  (the engine's backend), honouring the engine's whitespace setting (by
  default: no free whitespace anywhere).
- `json_object`: the same, for the schema `{"type": "object"}`.
- Tool calls: an xgrammar structural tag. Each function is a tag
  `<tool_call>{"name":"f","arguments":` + its arguments' grammar + `}</tool_call>`
  (Lemur's format, server/chat_format.py). `required` and a named function
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
from functools import lru_cache
from typing import Any

import jsonschema
import xgrammar

from server.chat_format import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, tool_call_prefix
from server.engine import StructuredSpec
from server.errors import InvalidRequest
from server.protocol.chat import ChatCompletionRequest
from server.protocol.tools import NamedToolChoice, Tool


def check_schema(schema: Any, param: str) -> str:
    """The schema as canonical JSON, or a 400 if it is not a JSON Schema the
    grammar backend can enforce."""
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{param}: a JSON Schema must be an object", param=param)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequest(f"{param}: not a valid JSON Schema: {exc.message}", param=param) from None
    text = json.dumps(schema, separators=(",", ":"))  # key order kept: it is the order of the output
    try:
        schema_grammar(text, any_whitespace=False)
    except Exception as exc:  # xgrammar's own errors: unsupported keywords, bad $refs, ...
        raise InvalidRequest(f"{param}: this schema cannot be enforced: {exc}", param=param) from None
    return text


# xgrammar 0.2.8 writes the characters of a string with min/maxLength as
# [^"\\\r\n], which admits raw control characters (invalid in JSON strings).
_LOOSE_STRING_CHAR = '[^\\"\\\\\\r\\n]'
_JSON_STRING_CHAR = '[^\\0-\\x1f\\"\\\\\\r\\n]'


@lru_cache(maxsize=512)
def schema_grammar(schema_json: str, any_whitespace: bool) -> str:
    """EBNF for JSON that follows the schema."""
    separators = None if any_whitespace else (",", ":")
    grammar = xgrammar.Grammar.from_json_schema(
        schema_json, any_whitespace=any_whitespace, separators=separators, strict_mode=True
    )
    return str(grammar).replace(_LOOSE_STRING_CHAR, _JSON_STRING_CHAR)


def _tag(name: str, schema_json: str, any_whitespace: bool) -> dict[str, Any]:
    content = {"type": "grammar", "grammar": schema_grammar(schema_json, any_whitespace)}
    return {"type": "tag", "begin": tool_call_prefix(name), "content": content, "end": "}" + TOOL_CALL_CLOSE}


def _check_tools(tools: list[Tool]) -> dict[str, str]:
    """{name: schema JSON}; 400 for a duplicate name or a bad schema."""
    schemas: dict[str, str] = {}
    for i, tool in enumerate(tools):
        name = tool.function.name
        if name in schemas:
            raise InvalidRequest(f"tools.{i}: two tools are named {name!r}", param=f"tools.{i}.function.name")
        schemas[name] = check_schema(tool.function.schema(), f"tools.{i}.function.parameters")
    return schemas


def tool_grammar(req: ChatCompletionRequest, any_whitespace: bool) -> StructuredSpec | None:
    """The structural tag for the request's tool choice; None for `none`."""
    kind = req.tool_choice_kind()
    if not req.tools:
        if req.tool_choice is not None and kind != "none":
            raise InvalidRequest(f"tool_choice {kind!r} needs tools", param="tool_choice")
        return None
    schemas = _check_tools(req.tools)
    if kind == "none":
        return None
    names = list(schemas)
    if isinstance(req.tool_choice, NamedToolChoice):
        name = req.tool_choice.function.name
        if name not in schemas:
            raise InvalidRequest(f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
        names = [name]
    tags = [_tag(name, schemas[name], any_whitespace) for name in names]
    single = kind == "named" or not req.parallel_tool_calls
    if kind == "auto":
        fmt = {"type": "triggered_tags", "triggers": [TOOL_CALL_OPEN], "tags": tags, "stop_after_first": single}
    else:
        fmt = {"type": "tags_with_separator", "tags": tags, "separator": "", "at_least_one": True,
               "stop_after_first": single}  # fmt: skip
    return StructuredSpec("structural_tag", json.dumps({"type": "structural_tag", "format": fmt}), "tools")


def structured_spec(req: ChatCompletionRequest, any_whitespace: bool) -> StructuredSpec | None:
    """The grammar a chat request asks for, if any."""
    tools = tool_grammar(req, any_whitespace)
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return tools
    if tools is not None:
        raise InvalidRequest(
            "response_format cannot be combined with tool calls; send tool_choice 'none' or leave out tools",
            param="response_format",
        )
    if fmt.type == "json_object":
        return StructuredSpec("grammar", schema_grammar('{"type":"object"}', any_whitespace), "response_format")
    assert fmt.json_schema is not None  # the protocol requires it for json_schema
    param = "response_format.json_schema.schema"
    schema = check_schema(fmt.json_schema.schema_, param)
    return StructuredSpec("grammar", schema_grammar(schema, any_whitespace), param)
