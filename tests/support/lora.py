"""LoRA adapters for tests, made with peft directly (not by our trainer), so
that the server is checked against the standard format itself."""

from __future__ import annotations

from pathlib import Path

import torch


def make_adapter(
    base: Path | None,
    out: Path,
    rank: int = 4,
    targets: tuple[str, ...] = ("q_proj", "v_proj", "down_proj"),
    seed: int = 1,
    scale: float = 0.5,
    config=None,
    **lora_kwargs,
) -> Path:
    """A PEFT LoRA adapter for the checkpoint `base` (or for a fresh model of
    the LlamaConfig `config`), with random B so that it changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base) if base is not None else LlamaForCausalLM(config)
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), **lora_kwargs)
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, scale)
    peft_model.save_pretrained(str(out))
    return out


def tiny_llama_config(hidden: int = 128, layers: int = 2, vocab: int = 2048):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=352 if hidden == 128 else hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )


def forge_weights(adapter: Path, entry: dict, data: bytes = b"\0" * 4) -> Path:
    """Overwrite the adapter's weights file with one tensor whose header entry
    is `entry` (any JSON, however wrong) followed by `data`."""
    import json

    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    header = json.dumps({name: entry}).encode()
    (adapter / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + data)
    return adapter
