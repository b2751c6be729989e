"""Pretraining data: dedup, code:text mixing, tokenising, packing, shards.

Output directory layout (all deterministic given the config's seed):
    meta.json                 dtype, seq_len, counts, mix statistics
    train-00000.npy ...       (N, seq_len) token ids, memory-mapped at read time
    heldout-00000.npy ...     held-out documents, packed the same way
Documents are split into train/held-out before packing, so no held-out text
is ever trained on; each document ends with eos before the next begins.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lemur.training.config import DataConfig
from lemur.training.corpus import Document


@dataclass(frozen=True)
class MixStats:
    documents: int
    duplicates_removed: int
    code_tokens: int
    text_tokens: int
    heldout_documents: int

    @property
    def ratio(self) -> float:
        return self.code_tokens / max(self.text_tokens, 1)


def dedup(docs: Iterable[Document]) -> tuple[list[Document], int]:
    """Exact-duplicate removal (on whitespace-trimmed content); first one wins."""
    seen: set[bytes] = set()
    out: list[Document] = []
    dropped = 0
    for doc in docs:
        digest = hashlib.sha256(doc.text.strip().encode("utf-8", "surrogatepass")).digest()
        if not doc.text.strip() or digest in seen:
            dropped += 1
            continue
        seen.add(digest)
        out.append(doc)
    return out, dropped


def mix(
    docs: list[Document], tokenize: Callable[[str], list[int]], ratio: float, budget: int, seed: int
) -> list[tuple[Document, list[int]]]:
    """Pick documents so that code tokens / text tokens ~= ratio within the token
    budget; documents are tokenised lazily, only as far as the budget reaches.
    When text runs short, code is cut to keep the ratio (and vice versa)."""
    rng = random.Random(seed)
    code = [d for d in docs if d.kind == "code"]
    text = [d for d in docs if d.kind == "text"]
    rng.shuffle(code)
    rng.shuffle(text)

    def take(pool: list[Document], want: float) -> list[tuple[Document, list[int]]]:
        got, out = 0, []
        for doc in pool:
            if got >= want:
                break
            ids = tokenize(doc.text)
            out.append((doc, ids))
            got += len(ids)
        return out

    if not code or not text or ratio <= 0:
        picked = take(code, budget) + take(text, 0 if code and ratio <= 0 else budget)
    else:
        texts = take(text, budget / (ratio + 1))
        text_tokens = sum(len(ids) for _, ids in texts)
        picked = take(code, text_tokens * ratio) + texts
    rng.shuffle(picked)
    return picked


def pack(token_lists: Iterable[list[int]], seq_len: int, eos_id: int) -> np.ndarray:
    """Concatenate documents with an eos after each and cut into rows of
    seq_len; the incomplete tail is dropped."""
    stream: list[int] = []
    for ids in token_lists:
        stream.extend(ids)
        stream.append(eos_id)
    rows = len(stream) // seq_len
    return np.asarray(stream[: rows * seq_len], dtype=np.int64).reshape(rows, seq_len)


def _dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def write_shards(out_dir: Path, split: str, rows: np.ndarray, shard_rows: int, vocab_size: int) -> list[str]:
    names = []
    dtype = _dtype(vocab_size)
    for i, start in enumerate(range(0, max(len(rows), 1), shard_rows)):
        name = f"{split}-{i:05d}.npy"
        np.save(out_dir / name, rows[start : start + shard_rows].astype(dtype))
        names.append(name)
    return names


def build_pretrain_data(docs: Iterable[Document], tokenizer, cfg: DataConfig, out_dir: Path) -> MixStats:
    """Tokenise, mix, split and pack `docs` into shards under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    unique, dropped = dedup(docs)
    picked = mix(
        unique, lambda t: tokenizer.encode(t, add_special_tokens=False), cfg.code_text_ratio, cfg.max_tokens, cfg.seed
    )
    n_heldout = max(1, round(len(picked) * cfg.heldout_fraction)) if cfg.heldout_fraction > 0 else 0
    heldout, train = picked[:n_heldout], picked[n_heldout:]
    eos = tokenizer.eos_token_id
    vocab = len(tokenizer)
    meta = {
        "seq_len": cfg.seq_len,
        "vocab_size": vocab,
        "eos_id": eos,
        "seed": cfg.seed,
        "splits": {},
    }
    for split, items in (("train", train), ("heldout", heldout)):
        rows = pack((ids for _, ids in items), cfg.seq_len, eos)
        meta["splits"][split] = {
            "files": write_shards(out_dir, split, rows, cfg.shard_sequences, vocab),
            "sequences": len(rows),
            "documents": len(items),
        }
    stats = MixStats(
        documents=len(picked),
        duplicates_removed=dropped,
        code_tokens=sum(len(ids) for d, ids in picked if d.kind == "code"),
        text_tokens=sum(len(ids) for d, ids in picked if d.kind == "text"),
        heldout_documents=len(heldout),
    )
    meta["mix"] = {**stats.__dict__, "code_text_ratio": round(stats.ratio, 3)}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return stats


class PackedDataset:
    """Rows of a split, memory-mapped across its shard files."""

    def __init__(self, data_dir: Path, split: str) -> None:
        meta = json.loads((data_dir / "meta.json").read_text())
        files = meta["splits"][split]["files"]
        self.shards = [np.load(data_dir / f, mmap_mode="r") for f in files]
        self.shards = [s for s in self.shards if len(s)]
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.seq_len = int(meta["seq_len"])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def rows(self, indices: Iterable[int]) -> np.ndarray:
        out = []
        for i in indices:
            shard = int(np.searchsorted(self.offsets, i, side="right") - 1)
            out.append(np.asarray(self.shards[shard][i - self.offsets[shard]], dtype=np.int64))
        return np.stack(out)  # (B, T)


def iter_index_batches(n: int, batch: int, seed: int, start_step: int = 0) -> Iterator[tuple[int, list[int]]]:
    """Endless (step, indices) over seeded per-epoch permutations; starting at
    `start_step` gives exactly the batches an uninterrupted run would see."""
    step = start_step
    while True:
        first = step * batch
        epoch, offset = divmod(first, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        indices = []
        while len(indices) < batch:
            take = perm[offset : offset + batch - len(indices)].tolist()
            indices.extend(take)
            offset += len(take)
            if offset >= n:
                epoch += 1
                offset = 0
                perm = np.random.default_rng([seed, epoch]).permutation(n)
        yield step, indices
        step += 1
