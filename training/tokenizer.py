"""Byte-level BPE tokenizer with Lemur's special tokens, trained from scratch.

Layout mirrors Lemur's Llama tokenizer: `<unk>` 0, `<s>` 1, `</s>` 2, the
learned vocabulary, then Lemur's five added tokens at the end. Encoding with
special tokens prepends `<s>` as Llama's tokenizer does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from lemur.chat_format import BOS, EOS, LEMUR_ADDED_TOKENS, PAD, UNK


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, added_tokens: Sequence[str] = LEMUR_ADDED_TOKENS
) -> Tokenizer:
    """Train a byte-level BPE on `texts`; `vocab_size` counts the base vocabulary
    (with `<unk>`, `<s>`, `</s>`) but not the added tokens (Lemur's by default)."""
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if added_tokens:
        tok.add_special_tokens(list(added_tokens))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def save_hf_tokenizer(tok: Tokenizer, out_dir: Path, chat_template: str | None = None) -> None:
    """Write tokenizer.json + tokenizer_config.json that `AutoTokenizer` and vLLM load."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=[t for t in LEMUR_ADDED_TOKENS if t != PAD],
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )
    if chat_template is not None:
        hf.chat_template = chat_template
    hf.save_pretrained(str(out_dir))


def iter_files_text(paths: Iterable[Path], max_bytes: int) -> Iterator[str]:
    """Yield file contents in the given order until `max_bytes` have been read."""
    total = 0
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield text
        total += len(text)
        if total >= max_bytes:
            return


def add_lemur_tokens(hf_tokenizer) -> int:
    """Continuing from a Llama checkpoint: keep its tokenizer, append Lemur's
    five tokens (ids 32000-32004 on Llama-2's 32000) and return how many were new."""
    added = hf_tokenizer.add_special_tokens(
        {"pad_token": PAD, "additional_special_tokens": [t for t in LEMUR_ADDED_TOKENS if t != PAD]}
    )
    return int(added)


def resize_embeddings_mean(model, new_vocab: int) -> None:
    """Grow input and output embeddings to new_vocab; new rows are the mean of
    the old ones (not random, which would make the new tokens' logits noisy),
    old rows stay bit-identical."""
    import torch

    emb = model.get_input_embeddings().weight
    old_vocab = emb.shape[0]
    if new_vocab <= old_vocab:
        return
    model.resize_token_embeddings(new_vocab, mean_resizing=False)
    with torch.no_grad():
        for weight in {
            id(w): w for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)
        }.values():
            weight[old_vocab:] = weight[:old_vocab].mean(dim=0, keepdim=True)
