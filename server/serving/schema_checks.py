"""What a request's JSON Schemas may cost, checked before any of them is
converted, and whether a schema admits any finite value at all.

A schema is cheap to send and can be dear to enforce: in the engine a
60k-value enum, 5000 `anyOf` branches or 2000 properties each compiled for
minutes, and `jsonschema`'s own check of a 1500-property tool took seconds.
So the gateway first walks each schema (a plain walk, no validation) and
counts, with a 400 `limit_exceeded` that names the field and the flag:
- bytes of schema in the whole request (--max-schema-bytes),
- object properties in one schema, through every level (--max-schema-properties),
- `enum` values in one schema (--max-schema-enum-values),
- branches of any one `anyOf` / `oneOf` (--max-schema-any-of).

A schema such as `{"$ref": "#"}`, or an object that requires itself, has no
finite instance: the engine would mask every token (vLLM then fails the
request) or nest for ever. `has_finite_instance` finds these.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lemur.server.serving.limits import LimitExceeded

Path = tuple[str, ...]
# Keywords whose value is one subschema, a list of them, or a name -> subschema map.
_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else")
_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")


@dataclass(frozen=True)
class SchemaLimits:
    max_bytes: int
    max_properties: int
    max_enum_values: int
    max_any_of: int


def subschemas(schema: Any, path: Path = ()) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every object subschema with its path (the keys that lead to it)."""
    stack: list[tuple[Path, Any]] = [(path, schema)]
    while stack:
        where, node = stack.pop()
        if not isinstance(node, dict):
            continue
        yield where, node
        for key in _ONE:
            if isinstance(node.get(key), dict):
                stack.append(((*where, key), node[key]))
        for key in _LIST:
            if isinstance(node.get(key), list):
                stack.extend(((*where, key, str(i)), sub) for i, sub in enumerate(node[key]))
        for key in _MAP:
            if isinstance(node.get(key), dict):
                stack.extend(((*where, key, name), sub) for name, sub in node[key].items())


def _field(param: str, path: Path) -> str:
    return ".".join((param, *path))


def check_limits(schema: Any, param: str, limits: SchemaLimits) -> None:
    """400 limit_exceeded, naming the field, for a schema over the limits."""
    # Counted over the whole schema: (keyword, its type, limit, what, flag).
    totals = (("properties", dict, limits.max_properties, "object properties", "--max-schema-properties"),
              ("enum", list, limits.max_enum_values, "enum values", "--max-schema-enum-values"))  # fmt: skip
    counts = [0] * len(totals)
    for path, node in subschemas(schema):
        for i, (key, kind, limit, what, flag) in enumerate(totals):
            if isinstance(node.get(key), kind):
                counts[i] += len(node[key])
                if counts[i] > limit:
                    raise LimitExceeded(
                        f"{_field(param, path)}: the schema has more than {limit} {what} ({flag})",
                        param=_field(param, (*path, key)),
                    )
        for key in ("anyOf", "oneOf"):
            if isinstance(node.get(key), list) and len(node[key]) > limits.max_any_of:
                raise LimitExceeded(
                    f"{_field(param, (*path, key))} has {len(node[key])} branches; the server allows at most "
                    f"{limits.max_any_of} (--max-schema-any-of)",
                    param=_field(param, (*path, key)),
                )


def check_bytes(sizes: list[tuple[str, int]], limits: SchemaLimits) -> None:
    """400 when the request's schemas together (field, JSON bytes) are too large."""
    total = sum(size for _, size in sizes)
    if total > limits.max_bytes:
        largest = max(sizes, key=lambda s: s[1])[0]
        raise LimitExceeded(
            f"the request's JSON Schemas take {total} bytes (the largest: {largest}); the server allows at most "
            f"{limits.max_bytes} per request (--max-schema-bytes)",
            param=largest,
        )


def _pointer(path: Path) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


def _can_end(node: dict[str, Any], path: Path, finite: set[str], known: set[str]) -> bool:
    """Whether `node` has a finite instance, given the subschemas (by JSON
    pointer) already known to have one. A `$ref` to anything but a subschema
    found here is left to the grammar backend to judge."""
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#") and ref[1:] in known and ref[1:] not in finite:
        return False
    for key, need in (("anyOf", any), ("oneOf", any), ("allOf", all)):
        branches = node.get(key)
        if isinstance(branches, list) and branches:
            if not need(_pointer((*path, key, str(i))) in finite for i in range(len(branches))):
                return False
    properties = node.get("properties") if isinstance(node.get("properties"), dict) else {}
    required = node.get("required") if isinstance(node.get("required"), list) else []
    if any(_pointer((*path, "properties", r)) not in finite for r in required if r in properties):
        return False
    min_items = node.get("minItems", 0)
    if isinstance(min_items, int) and min_items > 0 and isinstance(node.get("items"), dict):
        return _pointer((*path, "items")) in finite
    return True


def has_finite_instance(schema: Any) -> bool:
    """False when following the schema never ends (a `$ref` that loops back
    through required fields, or `{"$ref": "#"}`). A fixpoint: start from the
    subschemas that end without help, then those that end through them."""
    # Deepest first (the walk yields parents before children): most schemas settle in one pass.
    nodes = [(path, _pointer(path), node) for path, node in subschemas(schema)][::-1]
    known = {pointer for _, pointer, _ in nodes}
    finite: set[str] = set()
    changed = True
    while changed:
        changed = False
        for path, pointer, node in nodes:
            if pointer not in finite and _can_end(node, path, finite, known):
                finite.add(pointer)
                changed = True
    return not isinstance(schema, dict) or "" in finite
