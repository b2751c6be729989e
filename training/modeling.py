"""Building the model and tokenizer of a run: from scratch (a new byte-level
BPE and a fresh Llama) or continued from a Hugging Face Llama checkpoint."""

from __future__ import annotations

from pathlib import Path

from lemur.chat_format import LEMUR_CHATML_TEMPLATE
from lemur.training.config import ModelConfig
from lemur.training.corpus import Document
from lemur.training.tokenizer import add_lemur_tokens, resize_embeddings_mean, save_hf_tokenizer, train_bpe_tokenizer


def build_tokenizer(cfg: ModelConfig, docs: list[Document], out_dir: Path):
    """Create (or reuse) the run's tokenizer in out_dir and return it loaded."""
    from transformers import AutoTokenizer

    if not (out_dir / "tokenizer.json").exists() and not (out_dir / "tokenizer_config.json").exists():
        if cfg.init_from:
            tok = AutoTokenizer.from_pretrained(cfg.init_from)
            add_lemur_tokens(tok)
            tok.chat_template = LEMUR_CHATML_TEMPLATE
            tok.save_pretrained(str(out_dir))
        else:
            budget, texts = cfg.tokenizer_corpus_bytes, []
            for doc in docs:  # the mix's own documents, in their fixed order
                texts.append(doc.text)
                budget -= len(doc.text)
                if budget <= 0:
                    break
            save_hf_tokenizer(train_bpe_tokenizer(texts, cfg.vocab_size), out_dir, LEMUR_CHATML_TEMPLATE)
    return AutoTokenizer.from_pretrained(str(out_dir))


def build_model(cfg: ModelConfig, tokenizer, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if cfg.init_from:
        model = LlamaForCausalLM.from_pretrained(cfg.init_from, torch_dtype=torch.float32)
        resize_embeddings_mean(model, len(tokenizer))
        return model
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def load_model(path: Path):
    import torch
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32)
