"""Export a trained model as the Hugging Face directory the gateway serves.

config.json, model.safetensors shards, tokenizer files carrying the ChatML
chat_template, and a generation_config whose eos ids include `<|im_end|>`
(Lemur-chat's published files stop only at `</s>`, the trap the gateway has to
work around; our exports don't have it). transformers and vLLM load the
result unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lemur.chat_format import IM_END, LEMUR_CHATML_TEMPLATE


def export_checkpoint(src: Path, dst: Path, max_shard_size: str = "2GB", dtype: str = "float32") -> Path:
    """`src` as the served directory. Safetensors weights are copied file by file
    (a 70B model is never loaded into memory); other formats are loaded and
    written as safetensors shards of at most `max_shard_size`, in `dtype`."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(src))
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if not isinstance(im_end, int) or im_end == tokenizer.unk_token_id:
        raise ValueError(f"{src}: tokenizer has no {IM_END} token")
    dst.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(str(src))
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, im_end],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
        max_length=config.max_position_embeddings,
    )
    if any(src.glob("*.safetensors")):
        for f in [*src.glob("*.safetensors"), src / "model.safetensors.index.json", src / "config.json"]:
            if f.exists():
                shutil.copyfile(f, dst / f.name)
        generation.save_pretrained(str(dst))
    else:
        _rewrite_weights(src, dst, generation, max_shard_size, dtype)
    if not tokenizer.chat_template:
        tokenizer.chat_template = LEMUR_CHATML_TEMPLATE
    tokenizer.save_pretrained(str(dst))
    for extra in ("training_summary.json",):
        if (src / extra).exists():
            (dst / extra).write_text((src / extra).read_text())
    (dst / "lemur_export.json").write_text(json.dumps({"source": str(src), "chat_format": "chatml"}, indent=2) + "\n")
    return dst


def _rewrite_weights(src: Path, dst: Path, generation, max_shard_size: str, dtype: str) -> None:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(src), torch_dtype=getattr(torch, dtype))
    model.generation_config = generation
    model.save_pretrained(str(dst), safe_serialization=True, max_shard_size=max_shard_size)
