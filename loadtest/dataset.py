"""What to send: synthetic prompts of chosen lengths, a JSONL file of prompts
or conversations, or a ShareGPT file."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_WORDS = ("the quick brown fox jumps over a lazy dog while python code runs inside lemur serve "
          "def return import class yield async await list dict tuple value key token model").split()  # fmt: skip


@dataclass(frozen=True)
class BenchPrompt:
    messages: list[dict[str, str]] | None  # chat
    prompt: str | None  # completions
    max_tokens: int
    input_tokens: int | None = None  # when a tokenizer measured it

    def for_chat(self) -> list[dict[str, str]]:
        return self.messages if self.messages is not None else [{"role": "user", "content": self.prompt or ""}]

    def for_completions(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return "\n".join(m["content"] for m in self.messages or [])


def load_tokenizer(name_or_path: str | None) -> Any | None:
    """The target model's tokenizer, when it can be had locally (never downloaded here)."""
    if not name_or_path:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except Exception:
        return None


def _text_of_tokens(rng: random.Random, n: int, tokenizer: Any | None) -> tuple[str, int | None]:
    words = [rng.choice(_WORDS) for _ in range(max(n, 1))]
    text = " ".join(words)
    if tokenizer is None:
        return text, None
    ids = tokenizer.encode(text, add_special_tokens=False)
    while len(ids) < n:  # BPE may merge: add words until long enough
        text += " " + " ".join(rng.choice(_WORDS) for _ in range(n - len(ids)))
        ids = tokenizer.encode(text, add_special_tokens=False)
    text = tokenizer.decode(ids[:n])
    return text, n


def synthetic(count: int, input_len: int, output_len: int, range_ratio: float, seed: int,
              tokenizer: Any | None = None) -> list[BenchPrompt]:  # fmt: skip
    """Input and output lengths uniform in [len * (1 - r), len * (1 + r)]."""
    rng = random.Random(seed)

    def length(mean: int) -> int:
        return max(1, round(rng.uniform(mean * (1 - range_ratio), mean * (1 + range_ratio))))

    out = []
    for _ in range(count):
        text, measured = _text_of_tokens(rng, length(input_len), tokenizer)
        out.append(BenchPrompt(None, text, length(output_len), measured))
    return out


def from_jsonl(path: Path, default_max_tokens: int) -> list[BenchPrompt]:
    """Lines of {"prompt": ...} or {"messages": [...]}, optional "max_tokens"."""
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        out.append(BenchPrompt(row.get("messages"), row.get("prompt"), int(row.get("max_tokens", default_max_tokens))))
    return out


def from_sharegpt(path: Path, default_max_tokens: int, tokenizer: Any | None = None) -> list[BenchPrompt]:
    """ShareGPT JSON: the first human turn is the prompt; the length of the first
    reply (in the target's tokens, when its tokenizer is at hand) is max_tokens."""
    out = []
    for item in json.loads(path.read_text()):
        turns = item.get("conversations", [])
        if len(turns) < 2 or turns[0].get("from") != "human":
            continue
        prompt, reply = turns[0]["value"], turns[1]["value"]
        max_tokens = len(tokenizer.encode(reply, add_special_tokens=False)) if tokenizer else default_max_tokens
        out.append(BenchPrompt([{"role": "user", "content": prompt}], None, max(1, max_tokens)))
    return out
