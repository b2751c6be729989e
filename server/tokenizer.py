"""The gateway's tokenizer: the checkpoint's own Hugging Face tokenizer.

The gateway renders and tokenizes prompts itself so that the engine receives
token ids only (and so `/tokenize` and context-length checks agree with what
the engine sees).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lemur.chat_format import IM_END

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_decoder(hf: Any) -> dict[str, int] | None:
    """GPT-2 style byte-level vocabularies spell each byte as one printable
    character; return that character -> byte table if `hf` is one."""
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None or "ByteLevel" not in type(backend.decoder).__name__:
        return None
    from tokenizers.pre_tokenizers import ByteLevel

    return {ch: i for i, ch in enumerate(_gpt2_byte_order(ByteLevel.alphabet()))}


def _gpt2_byte_order(alphabet: list[str]) -> list[str]:
    # GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to
    # 256 + n in order; rebuild that table from the byte values.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    assert set(table.values()) == set(alphabet)
    return [table[b] for b in range(256)]


@dataclass(frozen=True)
class SpecialTokens:
    bos: str | None
    bos_id: int | None
    eos: str | None
    eos_id: int | None
    im_end_id: int | None


class Tokenizer:
    def __init__(self, hf: Any) -> None:
        self._hf = hf
        im_end = hf.convert_tokens_to_ids(IM_END)
        unk = hf.unk_token_id
        self.special = SpecialTokens(
            bos=hf.bos_token,
            bos_id=hf.bos_token_id,
            eos=hf.eos_token,
            eos_id=hf.eos_token_id,
            im_end_id=im_end if isinstance(im_end, int) and im_end != unk else None,
        )
        self._bytes_cache: dict[int, bytes] = {}
        self._byte_decoder = _byte_level_decoder(hf)
        # Every added token (<s>, </s>, <|im_start|>, ...): what text must never become.
        added = getattr(hf, "added_tokens_decoder", {})
        self.control_ids = frozenset(added) | frozenset(hf.all_special_ids)
        self.control_texts = tuple(sorted({str(t) for t in added.values()} | set(hf.all_special_tokens)))
        # Partial spellings, for text that could complete a control token with its neighbours.
        self._heads = tuple({c[:k] for c in self.control_texts for k in range(1, len(c))})
        self._tails = tuple({c[k:] for c in self.control_texts for k in range(1, len(c))})

    @classmethod
    def load(cls, path: str, revision: str | None = None, trust_remote_code: bool = False) -> Tokenizer:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code))

    @property
    def chat_template(self) -> str | None:
        template = getattr(self._hf, "chat_template", None)
        return template if isinstance(template, str) else None

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self._hf.encode(text, add_special_tokens=add_special_tokens))

    def encode_text(self, text: str) -> list[int]:
        """`text` as plain text: a control-token string in it is just characters."""
        return list(self._hf.encode(text, add_special_tokens=False, split_special_tokens=True))

    def has_control_text(self, text: str) -> bool:
        """Whether `text` spells a control token (`<|im_end|>`, `</s>`, ...),
        or could with the text around it (it starts or ends with part of one)."""
        return any(t in text for t in self.control_texts) or text.endswith(self._heads) or text.startswith(self._tails)

    def encode_prompt(self, prompt: str, data_spans: Sequence[tuple[int, int]]) -> list[int]:
        """Token ids of a rendered prompt whose template markers are control
        tokens but whose `data_spans` (message contents: untrusted text) are
        not. The prompt is tokenized whole, so benign text gets exactly the
        tokens it always had; only a span in which a control token matched is
        tokenized again as plain text (with the tokens that overlap its ends)."""
        enc = self._hf(prompt, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
        for start, end in sorted(data_spans, reverse=True):  # from the back: indices stay valid
            overlap = [k for k, (a, b) in enumerate(offsets) if a < end and b > start]
            if not overlap or not any(ids[k] in self.control_ids for k in overlap):
                continue
            first, last = overlap[0], overlap[-1]
            lo, hi = min(start, offsets[first][0]), max(end, offsets[last][1])
            plain = self.encode_text(prompt[lo:hi])
            ids[first : last + 1] = plain
            offsets[first : last + 1] = [(lo, hi)] * len(plain)
        return ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._hf.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int, text: str) -> list[int]:
        """The raw bytes of one token (OpenAI's `bytes` logprob field). A token
        can be part of a multi-byte character, whose decoded text is U+FFFD,
        so the bytes come from the vocabulary entry, not from `text`."""
        cached = self._bytes_cache.get(token_id)
        if cached is None:
            cached = self._token_bytes(token_id, text)
            self._bytes_cache[token_id] = cached
        return list(cached)

    def _token_bytes(self, token_id: int, text: str) -> bytes:
        piece = self._hf.convert_ids_to_tokens(token_id)
        if not isinstance(piece, str) or token_id in self._hf.all_special_ids:
            return text.encode("utf-8")
        if self._byte_decoder is not None and all(ch in self._byte_decoder for ch in piece):
            return bytes(self._byte_decoder[ch] for ch in piece)
        if m := _BYTE_PIECE.fullmatch(piece):  # SentencePiece byte fallback, e.g. <0xE2>
            return bytes([int(m.group(1), 16)])
        return piece.replace("\u2581", " ").encode("utf-8")
