"""LoRA adapters with peft: attach to a base for SFT, and merge for export.

The adapter a run writes (RUN/sft/final, or `--export-to`) is peft's standard
directory: adapter_config.json and adapter_model.safetensors, with
`base_model_name_or_path` naming the base it was trained on. transformers+peft
load it with `PeftModel.from_pretrained`, and `lemur serve BASE --lora-modules
NAME=DIR` serves it: the same files, nothing converted.

Only the adapter's tensors train and only they are checkpointed (see
trainer.py); the frozen base stays the input of the run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lemur.training.config import LoraConfig

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def attach_lora(model, cfg: LoraConfig, base_path: Path, gradient_checkpointing: bool = False):
    """Freeze `model` and wrap it in a PEFT model with fresh LoRA weights (A
    random, B zero: the adapter starts as the identity). Seed torch first for
    a reproducible A."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    if cfg.rank < 1:
        raise ValueError(f"lora.rank must be at least 1, not {cfg.rank}")
    peft_cfg = PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model.name_or_path = str(base_path.resolve())  # peft records it as base_model_name_or_path
    peft_model = get_peft_model(model, peft_cfg)
    if gradient_checkpointing:
        # Checkpointed blocks re-run forward in backward; with a frozen
        # embedding their input would not require grad, and no gradient
        # would reach the adapters.
        peft_model.enable_input_require_grads()
    return peft_model


def is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def adapter_base(adapter: Path) -> str:
    return json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""


def copy_adapter(src: Path, dst: Path) -> Path:
    """The adapter's two files (and the run's summary when present) into dst."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in (*ADAPTER_FILES, "training_summary.json"):
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    return dst


def merge_adapter(adapter: Path, dst: Path, base: Path | None = None, max_shard_size: str = "2GB") -> Path:
    """A full checkpoint with the adapter folded into the base weights
    (W + B @ A * alpha / r), exported like any trained model."""
    import tempfile

    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaForCausalLM

    from lemur.training.export import export_checkpoint

    base = base or Path(adapter_base(adapter))
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"base model {base} not found: pass --base")
    model = LlamaForCausalLM.from_pretrained(str(base), torch_dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with tempfile.TemporaryDirectory(prefix="lemur-merge-") as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(base)).save_pretrained(tmp)
        return export_checkpoint(Path(tmp), dst, max_shard_size)
