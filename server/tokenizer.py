"""The gateway's tokenizer: the checkpoint's own Hugging Face tokenizer.

The gateway renders and tokenizes prompts itself so that the engine receives
token ids only (and so `/tokenize` and context-length checks agree with what
the engine sees).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.chat_format import IM_END


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
        self.vocab_size = len(hf)

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

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._hf.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token: str) -> list[int]:
        return list(token.encode("utf-8"))
