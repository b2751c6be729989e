"""A tiny Lemur-format checkpoint (random weights) for tests and the demo server.

Same architecture family and tokenizer conventions as lemur-70b-chat
(LlamaForCausalLM, GQA, ChatML special tokens, eos `</s>`, no chat_template in
the files), shrunk to run on a CPU in seconds. head_dim is 32 because vLLM's
CPU attention rejects 16.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lemur.training.config import ModelConfig
from lemur.training.corpus import stdlib_python_files
from lemur.training.modeling import build_model
from lemur.training.tokenizer import iter_files_text, save_hf_tokenizer, train_bpe_tokenizer

UNTRAINED_NAME = "lemur-tiny-chat-untrained"


# The untrained test/demo model: Lemur's shape family at toy size.
TINY_UNTRAINED = ModelConfig(
    vocab_size=2048,
    hidden_size=128,
    intermediate_size=352,
    num_layers=2,
    num_heads=4,  # head_dim 32
    num_kv_heads=2,  # GQA, like 64/8 in the 70B model
    max_position_embeddings=1024,
    tokenizer_corpus_bytes=3_000_000,
)


def build_tiny_checkpoint(out_dir: Path, cfg: ModelConfig = TINY_UNTRAINED, seed: int = 0) -> Path:
    """Write a Hugging Face checkpoint directory that vLLM and transformers load."""
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = train_bpe_tokenizer(iter_files_text(stdlib_python_files(), cfg.tokenizer_corpus_bytes), cfg.vocab_size)
    save_hf_tokenizer(tok, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    model = build_model(cfg, tokenizer, seed)
    config = model.config
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


def build_turn_ender(source: Path, out_dir: Path, context: int = 32768) -> Path:
    """A copy of the tiny checkpoint `source` that always ends its turn: for
    tests of agent clients (Codex, Claude Code, the Agents SDK), which need
    replies that end and a context that holds their long first prompts.

    Why it works: with every attention and MLP output projection zero, the
    residual stream stays the token's embedding; embeddings are e0 (one unit
    in dimension 0), the final norm passes only dimension 0, and the only
    non-zero output row is `<|im_end|>`'s. So `<|im_end|>` gets logit 10 and
    every other token 0, whatever the input: a sampled reply is a few tokens
    at most, a greedy one empty, and under a grammar (a forced tool call)
    the lowest allowed token wins until the grammar lets the turn end.
    """
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shutil.copytree(source, out_dir, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    end = AutoTokenizer.from_pretrained(str(source)).convert_tokens_to_ids("<|im_end|>")
    hidden = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0  # every token: e0, RMS 1/sqrt(hidden)
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0  # normed: sqrt(hidden) in dimension 0, zero elsewhere
        model.lm_head.weight.zero_()
        model.lm_head.weight[end, 0] = 10.0 / hidden**0.5
    model.config.max_position_embeddings = context
    model.save_pretrained(str(out_dir), safe_serialization=True)
    gen = json.loads((out_dir / "generation_config.json").read_text())
    (out_dir / "generation_config.json").write_text(json.dumps({**gen, "max_length": context}, indent=2) + "\n")
    (out_dir / "LEMUR_UNTRAINED").write_text("crafted weights: always ends its turn; for tests of agent clients\n")
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
