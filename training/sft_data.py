"""ChatML SFT examples with Lemur's assistant-only loss.

Each turn is `<|im_start|>{role}\\n{content}<|im_end|>\\n`. Exactly as in
Lemur's training code, only an assistant turn's content and the
`<|im_end|>\\n` after it carry loss; the `<|im_start|>assistant\\n` header, the
leading `<s>` and every system/user turn are masked (label -100). Segments are
tokenised separately, so the mask boundaries are exact (they fall on control
tokens, where the served prompt's tokenization breaks too).

Tool use follows Lemur's tool format (lemur/chat_format.py), text for text
what the serving template renders: the tools in the system turn (masked),
the assistant's calls (trained: they are what the model must learn to
write), and each tool result as a `tool` turn (masked: the model reads
results, it never writes them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lemur.chat_format import CHAT_ROLES, IM_END, IM_START, tool_call_text, tool_result_header, tools_text

IGNORE = -100


@dataclass(frozen=True)
class SftExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss


def conversation_segments(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict] | None = None
) -> list[tuple[str, bool]]:
    """(text, trained) pieces after `<s>`; joined, they are the template's
    rendering of the conversation (no generation prompt)."""
    functions = [t["function"] for t in tools or ()]
    segments: list[tuple[str, bool]] = []
    if functions and (not messages or messages[0]["role"] != "system"):
        segments.append((f"{IM_START}system\n{tools_text(functions)}{IM_END}\n", False))
    for i, m in enumerate(messages):
        role = m["role"]
        if role not in CHAT_ROLES:
            raise ValueError(f"unknown role {role!r} (Lemur's SFT takes {', '.join(CHAT_ROLES)})")
        content = m.get("content") or ""
        if role == "system" and i == 0 and functions:
            content += ("\n\n" if content else "") + tools_text(functions)
        if role == "tool":
            content = tool_result_header(m["tool_call_id"], m.get("name")) + content
        for call in m.get("tool_calls") or ():
            arguments = call["function"]["arguments"]
            content += tool_call_text(
                call["function"]["name"], json.loads(arguments) if isinstance(arguments, str) else arguments
            )
        trained = role == "assistant"
        segments += [(f"{IM_START}{role}\n", False), (content, trained), (f"{IM_END}\n", trained)]
    return segments


def tokenize_conversation(
    messages: Sequence[dict[str, Any]], tokenizer, max_len: int, tools: Sequence[dict] | None = None
) -> SftExample:
    ids: list[int] = [tokenizer.bos_token_id]
    labels: list[int] = [IGNORE]
    for text, trained in conversation_segments(messages, tools):
        toks = tokenizer.encode(text, add_special_tokens=False)
        ids.extend(toks)
        labels.extend(toks if trained else [IGNORE] * len(toks))
    return SftExample(ids[:max_len], labels[:max_len])


def read_conversations(paths: Iterable[str]) -> list[dict[str, Any]]:
    """Rows of JSONL files: `{"messages": [...], "tools": [...]}` (tools optional)."""
    convs = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    row = json.loads(line)
                    if "messages" not in row:
                        raise ValueError(f"{p}:{line_no}: no 'messages' field")
                    convs.append({"messages": row["messages"], "tools": row.get("tools")})
    return convs


def write_sft_split(out_dir: Path, split: str, examples: Sequence[SftExample]) -> None:
    """Flat token/label arrays plus row offsets; memory-mapped at read time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(e.input_ids) for e in examples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    np.save(out_dir / f"{split}-ids.npy", np.array([t for e in examples for t in e.input_ids], dtype=np.int32))
    np.save(out_dir / f"{split}-labels.npy", np.array([t for e in examples for t in e.labels], dtype=np.int32))
    np.save(out_dir / f"{split}-offsets.npy", offsets)


class SftDataset:
    def __init__(self, data_dir: Path, split: str, pad_id: int) -> None:
        self.ids = np.load(data_dir / f"{split}-ids.npy", mmap_mode="r")
        self.labels = np.load(data_dir / f"{split}-labels.npy", mmap_mode="r")
        self.offsets = np.load(data_dir / f"{split}-offsets.npy")
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def example(self, i: int) -> SftExample:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return SftExample(self.ids[a:b].tolist(), self.labels[a:b].tolist())

    def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Right-padded batch: input_ids, labels and attention_mask, each (B, T)."""
        examples = [self.example(i) for i in indices]
        width = max(len(e.input_ids) for e in examples)
        ids = np.full((len(examples), width), self.pad_id, dtype=np.int64)
        labels = np.full((len(examples), width), IGNORE, dtype=np.int64)
        mask = np.zeros((len(examples), width), dtype=np.int64)
        for row, e in enumerate(examples):
            n = len(e.input_ids)
            ids[row, :n], labels[row, :n], mask[row, :n] = e.input_ids, e.labels, 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
