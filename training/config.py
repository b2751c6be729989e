"""Recipe configuration: frozen dataclasses loaded from TOML presets.

A preset file (training/presets/NAME.toml, or any path) has the sections
[model], [data], [pretrain], [sft], [distributed] and [lora]; `--set section.key=value`
overrides single values from the command line (tests use it for micro runs).
"""

from __future__ import annotations

import ast
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESETS_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class ModelConfig:
    # From scratch: a byte-level BPE with this many base tokens (Lemur's five
    # added tokens come on top). Continuing: ignored, the base tokenizer is kept.
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 688
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 4
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    # A Hugging Face Llama checkpoint to continue from ("" = from scratch).
    init_from: str = ""
    tokenizer_corpus_bytes: int = 4_000_000


@dataclass(frozen=True)
class DataConfig:
    # Sources. "demo" = the standard library's source (code) and pydoc topics (text).
    code_paths: tuple[str, ...] = ()
    text_paths: tuple[str, ...] = ()
    jsonl_paths: tuple[str, ...] = ()  # JSONL with a "text" field (and optional "kind")
    dataset: str = ""  # a Hugging Face dataset name (needs the `hf` extra)
    dataset_text_field: str = "text"
    demo: bool = True
    code_extensions: tuple[str, ...] = (".py",)
    code_text_ratio: float = 10.0
    max_tokens: int = 2_000_000  # token budget of the pretraining mix
    seq_len: int = 256
    heldout_fraction: float = 0.02
    shard_sequences: int = 4096
    seed: int = 0
    # SFT: JSONL files with {"messages": [...], "tools": [...]}; empty = the generated demo set.
    sft_paths: tuple[str, ...] = ()
    sft_demo_conversations: int = 4000
    # Generated tool-use conversations (Lemur's tool format) added to the demo set.
    sft_tool_conversations: int = 0
    sft_max_seq_len: int = 512
    sft_heldout: int = 100
    # The generated SFT set when sft_paths is empty: "chat" (the demo chat and
    # tool conversations) or "house-style" (the LoRA demo task, training/sft_style.py).
    sft_task: str = "chat"


@dataclass(frozen=True)
class PhaseConfig:
    """Optimisation settings of one phase (pretrain or SFT)."""

    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"  # "cosine" | "linear"
    warmup_steps: int = 50
    max_steps: int = 1000  # optimizer steps; for SFT 0 = derive from epochs
    epochs: float = 1.0
    micro_batch_size: int = 16
    grad_accum: int = 1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    save_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    gradient_checkpointing: bool = False
    bf16: str = "auto"  # "auto": bf16 autocast on GPU only | "true" | "false"
    seed: int = 0


@dataclass(frozen=True)
class LoraConfig:
    """SFT as a LoRA adapter (peft) on a frozen base, instead of all weights."""

    enabled: bool = False
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # Every linear layer of a Llama block; vLLM serves adapters on any of them.
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class DistributedConfig:
    # "ddp" or "fsdp" (fully_shard per decoder layer), under torchrun.
    strategy: str = "ddp"
    # FSDP: reshard parameters after forward (saves memory, costs an all-gather).
    reshard_after_forward: bool = True
    backend: str = "auto"  # "auto": nccl on GPU, gloo on CPU


@dataclass(frozen=True)
class RecipeConfig:
    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PhaseConfig = field(default_factory=PhaseConfig)
    sft: PhaseConfig = field(default_factory=lambda: PhaseConfig(lr=5e-5, schedule="linear", max_steps=0, epochs=3))
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "pretrain": PhaseConfig,
    "sft": PhaseConfig,
    "distributed": DistributedConfig,
    "lora": LoraConfig,
}


def _coerce(cls: type, key: str, value: Any) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise ValueError(f"unknown setting {cls.__name__}.{key}")
    default = getattr(cls(), key)
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    return value


def _build(raw: dict[str, Any]) -> RecipeConfig:
    base = RecipeConfig()
    parts: dict[str, Any] = {"name": raw.get("name", base.name)}
    for section, cls in _SECTIONS.items():
        values = raw.get(section, {})
        current = getattr(base, section)
        parts[section] = dataclasses.replace(current, **{k: _coerce(cls, k, v) for k, v in values.items()})
    unknown = set(raw) - set(_SECTIONS) - {"name"}
    if unknown:
        raise ValueError(f"unknown config sections: {sorted(unknown)}")
    return RecipeConfig(**parts)


def _parse_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_config(preset_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> RecipeConfig:
    """Load a preset name (tiny, 1b, 7b, 70b) or a TOML path, then apply
    `section.key=value` overrides."""
    path = Path(preset_or_path)
    if not path.suffix:
        path = PRESETS_DIR / f"{preset_or_path}.toml"
    if not path.is_file():
        names = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
        raise FileNotFoundError(f"no preset or config file {preset_or_path!r} (presets: {', '.join(names)})")
    raw = tomllib.loads(path.read_text())
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ValueError(f"override {item!r} is not section.key=value")
        raw.setdefault(section, {})[name] = _parse_value(value)
    return _build(raw)


def config_to_dict(cfg: RecipeConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
