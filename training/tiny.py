"""A tiny Lemur-format checkpoint (random weights) for tests and the demo server.

Same architecture family and tokenizer conventions as lemur-70b-chat
(LlamaForCausalLM, GQA, ChatML special tokens, eos `</s>`, no chat_template in
the files), shrunk to run on a CPU in seconds. head_dim is 32 because vLLM's
CPU attention rejects 16.
"""

from __future__ import annotations

import argparse
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from training.tokenizer import iter_files_text, save_hf_tokenizer, train_bpe_tokenizer

UNTRAINED_NAME = "lemur-tiny-chat-untrained"


@dataclass(frozen=True)
class TinyConfig:
    base_vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 352
    num_layers: int = 2
    num_heads: int = 4  # head_dim 32
    num_kv_heads: int = 2  # GQA, like 64/8 in the 70B model
    max_position_embeddings: int = 1024
    tokenizer_corpus_bytes: int = 3_000_000
    seed: int = 0


def stdlib_python_files() -> list[Path]:
    """The standard library's own sources, in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.glob("*.py")] + [p for p in root.glob("*/*.py") if "test" not in p.parts]
    return sorted(files)


def build_tiny_checkpoint(out_dir: Path, cfg: TinyConfig = TinyConfig()) -> Path:
    """Write a Hugging Face checkpoint directory that vLLM and transformers load."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = train_bpe_tokenizer(iter_files_text(stdlib_python_files(), cfg.tokenizer_corpus_bytes), cfg.base_vocab_size)
    save_hf_tokenizer(tok, out_dir)
    vocab_size = tok.get_vocab_size()

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
        pad_token_id=tok.token_to_id("<unk>"),
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    # Lemur-chat's generation defaults (its generation_config.json): eos is `</s>` only.
    gen = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.9,
        "max_length": cfg.max_position_embeddings,
    }
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    (out_dir / "LEMUR_UNTRAINED").write_text("random weights: for tests and demos only\n")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lemur init-model", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("models") / UNTRAINED_NAME)
    parser.add_argument("--force", action="store_true", help="rebuild even if it exists")
    args = parser.parse_args(argv)
    if (args.out / "config.json").exists() and not args.force:
        print(f"{args.out} already exists")
        return 0
    build_tiny_checkpoint(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
