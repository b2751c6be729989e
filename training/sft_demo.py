"""The demo SFT set: ChatML conversations about the standard library, generated
deterministically from its own source (names, signatures, docstrings).

Answers are short and factual so that a tiny model can learn both the content
pattern and, above all, to end its turn with `<|im_end|>`.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from lemur.training.corpus import stdlib_python_files, stdlib_root

SYSTEM_PROMPT = "You are a helpful, respectful, and honest assistant."


@dataclass(frozen=True)
class ApiItem:
    module: str
    name: str
    kind: str  # "function" | "class"
    signature: str
    summary: str


def _summary(doc: str) -> str | None:
    first = doc.strip().split("\n\n")[0]
    first = re.sub(r"\s+", " ", first).strip()
    if not 15 <= len(first) <= 200 or not first[0].isalpha():
        return None
    return first if first.endswith(".") else first + "."


def iter_api_items() -> Iterator[ApiItem]:
    root = stdlib_root()
    for path in stdlib_python_files():
        rel = path.relative_to(root).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if any(p.startswith("_") for p in parts):
            continue
        module = ".".join(parts)
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef | ast.ClassDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            summary = _summary(doc) if doc else None
            if summary is None:
                continue
            if isinstance(node, ast.FunctionDef):
                sig = f"def {node.name}({ast.unparse(node.args)})"
                kind = "function"
            else:
                bases = ", ".join(ast.unparse(b) for b in node.bases)
                sig = f"class {node.name}({bases})" if bases else f"class {node.name}"
                kind = "class"
            if len(sig) > 120:
                continue
            yield ApiItem(module, node.name, kind, sig, summary)


def _qa(item: ApiItem, rng: random.Random) -> tuple[str, str]:
    m, n, k = item.module, item.name, item.kind
    choice = rng.randrange(5)
    if choice == 0:
        return f"What does the {k} `{n}` in the `{m}` module do?", item.summary
    if choice == 1:
        return (f"Show me the signature of `{m}.{n}`.", f"```python\n{item.signature}\n```")
    if choice == 2:
        return f"Which module defines `{n}`?", f"`{n}` is a {k} defined in the `{m}` module."
    if choice == 3:
        return (f"Explain `{m}.{n}` briefly.", f"`{n}` is a {k} in `{m}`. {item.summary}")
    return (f"How do I import `{n}` from `{m}`?", f"```python\nfrom {m} import {n}\n```")


def demo_conversations(count: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """`count` conversations (one or two exchanges, some with a system prompt)."""
    items = sorted(set(iter_api_items()), key=lambda i: (i.module, i.name))
    rng = random.Random(seed)
    convs: list[list[dict[str, str]]] = []
    while len(convs) < count and items:
        item = items[rng.randrange(len(items))]
        messages: list[dict[str, str]] = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": SYSTEM_PROMPT})
        for _ in range(1 + (rng.random() < 0.2)):
            q, a = _qa(item, rng)
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            item = items[rng.randrange(len(items))]
        convs.append(messages)
    return convs
