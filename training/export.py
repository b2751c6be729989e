"""Export a trained model as the Hugging Face directory the gateway serves.

config.json, model.safetensors shards, tokenizer files carrying the ChatML
chat_template, and a generation_config whose eos ids include `<|im_end|>`
(Lemur-chat's published files stop only at `</s>`, the trap the gateway has to
work around; our exports don't have it). transformers and vLLM load the
result unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

from lemur.chat_format import IM_END, LEMUR_CHATML_TEMPLATE


def export_checkpoint(src: Path, dst: Path, max_shard_size: str = "2GB", dtype: str = "float32") -> Path:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(src))
    model = LlamaForCausalLM.from_pretrained(str(src), torch_dtype=getattr(torch, dtype))
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if not isinstance(im_end, int) or im_end == tokenizer.unk_token_id:
        raise ValueError(f"{src}: tokenizer has no {IM_END} token")
    dst.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, im_end],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
        max_length=model.config.max_position_embeddings,
    )
    model.save_pretrained(str(dst), safe_serialization=True, max_shard_size=max_shard_size)
    if not tokenizer.chat_template:
        tokenizer.chat_template = LEMUR_CHATML_TEMPLATE
    tokenizer.save_pretrained(str(dst))
    for extra in ("training_summary.json",):
        if (src / extra).exists():
            (dst / extra).write_text((src / extra).read_text())
    (dst / "lemur_export.json").write_text(json.dumps({"source": str(src), "chat_format": "chatml"}, indent=2) + "\n")
    return dst
