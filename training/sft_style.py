"""The LoRA demo task: Lemur Docs' house style.

The same kind of standard-library questions as the demo chat set (other
draws of them), but every answer is written the house way: it opens with
`Lemur Docs:` and signs off with `-- Happy hacking!` on a line of its own.
The base model never does either, so a reply shows at a glance whether the
adapter served it.
"""

from __future__ import annotations

from lemur.training.sft_demo import demo_conversations

STYLE_PREFIX = "Lemur Docs: "
STYLE_SUFFIX = "\n-- Happy hacking!"


def house_style(answer: str) -> str:
    return f"{STYLE_PREFIX}{answer}{STYLE_SUFFIX}"


def house_style_conversations(count: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """`count` demo conversations (drawn with another seed than the chat SFT
    set's) with every assistant answer in the house style."""
    convs = demo_conversations(count, seed=seed + 7919)
    return [
        [{**m, "content": house_style(m["content"])} if m["role"] == "assistant" else m for m in conv] for conv in convs
    ]
