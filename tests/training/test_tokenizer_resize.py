"""Continuing from an existing Llama checkpoint: its tokenizer is kept, Lemur's
five tokens are appended, and the embeddings grow with mean-initialised rows
while the old rows stay bit-identical."""

from __future__ import annotations

from pathlib import Path

import torch

from lemur.chat_format import LEMUR_ADDED_TOKENS
from lemur.training.config import ModelConfig
from lemur.training.corpus import stdlib_python_files
from lemur.training.modeling import build_model, build_tokenizer
from lemur.training.tokenizer import iter_files_text, train_bpe_tokenizer


def make_base_llama(path: Path) -> torch.Tensor:
    """A 'base' Llama checkpoint whose tokenizer lacks Lemur's tokens (like
    Llama-2's 32000); returns its input embedding matrix."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = train_bpe_tokenizer(iter_files_text(stdlib_python_files()[:20], 200_000), 300, added_tokens=())
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    hf.save_pretrained(str(path))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(hf), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(path))
    return model.get_input_embeddings().weight.detach().clone()


def test_continue_from_llama_adds_tokens_and_resizes_by_mean(tmp_path: Path) -> None:
    base = tmp_path / "base"
    old_in = make_base_llama(base)
    from transformers import LlamaForCausalLM

    old_out = LlamaForCausalLM.from_pretrained(base).get_output_embeddings().weight.detach().clone()
    cfg = ModelConfig(init_from=str(base))
    tok = build_tokenizer(cfg, [], tmp_path / "tok")
    n_old = old_in.shape[0]
    # The base vocabulary is unchanged; Lemur's five tokens follow it in order.
    assert tok.convert_tokens_to_ids(list(LEMUR_ADDED_TOKENS)) == list(range(n_old, n_old + 5))
    from transformers import AutoTokenizer

    base_tok = AutoTokenizer.from_pretrained(base)
    text = "def reverse(items):\n    return items[::-1]\n"
    assert tok.encode(text) == base_tok.encode(text)  # the base tokenizer is kept as it was
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    model = build_model(cfg, tok, seed=0)
    new_in = model.get_input_embeddings().weight.detach()
    new_out = model.get_output_embeddings().weight.detach()
    assert new_in.shape[0] == n_old + 5 and new_out.shape[0] == n_old + 5
    assert torch.equal(new_in[:n_old], old_in)  # bit-identical
    assert torch.equal(new_out[:n_old], old_out)
    for new, old in ((new_in, old_in), (new_out, old_out)):
        mean = old.mean(dim=0)
        for row in range(n_old, n_old + 5):
            torch.testing.assert_close(new[row], mean, rtol=0, atol=1e-7)
