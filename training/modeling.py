"""Building the model and tokenizer of a run: from scratch (a new byte-level
BPE and a fresh Llama) or continued from a Hugging Face Llama checkpoint."""

from __future__ import annotations

from pathlib import Path

from lemur.chat_format import LEMUR_CHATML_TEMPLATE
from lemur.training.config import DistributedConfig, ModelConfig
from lemur.training.corpus import Document
from lemur.training.distributed import Dist
from lemur.training.tokenizer import add_lemur_tokens, resize_embeddings_mean, save_hf_tokenizer, train_bpe_tokenizer

Sharding = tuple[DistributedConfig, Dist]  # how to shard a model built under FSDP


def sharding_of(cfg: DistributedConfig, d: Dist) -> Sharding | None:
    """FSDP across ranks: models are built sharded. Otherwise (one process, DDP) whole."""
    return (cfg, d) if d.enabled and cfg.strategy == "fsdp" else None


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


def local_model_dir(name: str) -> Path:
    """A Hugging Face model as a local directory: a path, or a Hub id resolved
    through the cache (downloaded if missing and the Hub is reachable)."""
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))


def build_model(cfg: ModelConfig, tokenizer, seed: int, sharding: Sharding | None = None):
    """`sharding` (FSDP under torchrun): a model continued from `init_from` is
    built sharded, each rank reading only its shards (training/sharded.py)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if cfg.init_from and sharding is not None:
        from lemur.training.sharded import build_sharded

        return build_sharded(local_model_dir(cfg.init_from), *sharding, vocab_size=len(tokenizer))
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


def load_model(path: Path, sharding: Sharding | None = None):
    import torch
    from transformers import LlamaForCausalLM

    if sharding is not None:
        from lemur.training.sharded import build_sharded

        return build_sharded(path, *sharding)
    return LlamaForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32)
