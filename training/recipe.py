"""Lemur's recipe as stages: tokenizer + data -> pretrain -> SFT -> export.

Each stage reads what the previous one wrote under the run directory, so the
stages can be run one at a time (`lemur train pretrain`, `... sft`,
`... export`) or all together (`lemur train recipe`), and a stage that was
interrupted resumes from its latest checkpoint.

    RUN/tokenizer/              tokenizer (BPE from scratch, or the base one + Lemur's tokens)
    RUN/data/pretrain/          packed, memory-mapped shards + meta.json
    RUN/data/sft/               tokenised conversations with loss masks, heldout.jsonl
    RUN/pretrain/, RUN/sft/     metrics.jsonl, loss_curve.png, checkpoints/, final/
                                (with [lora] enabled, RUN/sft/final is a PEFT adapter)
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict
from pathlib import Path

from lemur.training.config import DataConfig, RecipeConfig
from lemur.training.corpus import iter_documents
from lemur.training.data import PackedDataset, build_pretrain_data
from lemur.training.distributed import Dist, barrier, init_distributed
from lemur.training.lora import attach_lora
from lemur.training.modeling import build_model, build_tokenizer, load_model, sharding_of
from lemur.training.plots import plot_loss_curve
from lemur.training.sft_data import SftDataset, read_conversations, tokenize_conversation, write_sft_split
from lemur.training.sft_demo import demo_conversations
from lemur.training.sft_style import house_style_conversations
from lemur.training.sft_tools import tool_conversations
from lemur.training.trainer import PhaseResult, save_pretrained_final, train_phase


class PretrainBatches:
    """Packed rows; the labels are the inputs (the model shifts them)."""

    def __init__(self, data: PackedDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, indices: list[int]) -> dict:
        rows = self.data.rows(indices)  # (B, T)
        return {"input_ids": rows, "labels": rows}


def _summary(result: PhaseResult) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}


def prepare_pretrain(cfg: RecipeConfig, run: Path, d: Dist):
    """Tokenizer and packed data (built by the main rank, then shared)."""
    data_dir = run / "data" / "pretrain"
    if d.is_main and not (data_dir / "meta.json").exists():
        docs = list(iter_documents(cfg.data))
        sample = docs[:]
        random.Random(cfg.data.seed).shuffle(sample)
        tokenizer = build_tokenizer(cfg.model, sample, run / "tokenizer")
        build_pretrain_data(docs, tokenizer, cfg.data, data_dir)
    barrier(d)
    return build_tokenizer(cfg.model, [], run / "tokenizer")


def run_pretrain(cfg: RecipeConfig, run: Path, d: Dist, resume: bool = True, stop_after: int | None = None) -> dict:
    tokenizer = prepare_pretrain(cfg, run, d)
    data_dir = run / "data" / "pretrain"
    train = PretrainBatches(PackedDataset(data_dir, "train"))
    heldout = PretrainBatches(PackedDataset(data_dir, "heldout"))
    model = build_model(cfg.model, tokenizer, cfg.pretrain.seed, sharding_of(cfg.distributed, d))
    out = run / "pretrain"
    result = train_phase(
        name="pretrain",
        model=model,
        train_data=train,
        eval_data=heldout,
        cfg=cfg.pretrain,
        dist_cfg=cfg.distributed,
        d=d,
        out_dir=out,
        total_steps=cfg.pretrain.max_steps,
        resume=resume,
        stop_after=stop_after,
    )
    summary = {"phase": "pretrain", **_summary(result), "data": json.loads((data_dir / "meta.json").read_text())["mix"]}
    if result.steps >= cfg.pretrain.max_steps:
        save_pretrained_final(model, tokenizer, out / "final", d)
    if d.is_main:
        plot_loss_curve(
            out / "metrics.jsonl",
            out / "loss_curve.png",
            f"{cfg.name}: pretraining (code:text {cfg.data.code_text_ratio:g}:1)",
        )
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def generated_sft_set(data: DataConfig) -> list[dict]:
    """The built-in SFT conversations of `data.sft_task`."""
    if data.sft_task == "chat":
        n = data.sft_demo_conversations + data.sft_heldout
        convs = [{"messages": m, "tools": None} for m in demo_conversations(n, seed=data.seed)]
        return convs + tool_conversations(data.sft_tool_conversations, seed=data.seed, split="train")
    if data.sft_task == "house-style":
        n = data.sft_demo_conversations + data.sft_heldout
        return [{"messages": m, "tools": None} for m in house_style_conversations(n, seed=data.seed)]
    raise ValueError(f"unknown data.sft_task {data.sft_task!r} (chat or house-style)")


def prepare_sft(cfg: RecipeConfig, run: Path, tokenizer, d: Dist) -> Path:
    sft_dir = run / "data" / "sft"
    if d.is_main and not (sft_dir / "train-offsets.npy").exists():
        data = cfg.data
        convs = read_conversations(data.sft_paths) if data.sft_paths else generated_sft_set(data)
        random.Random(data.seed).shuffle(convs)
        n_held = min(data.sft_heldout, len(convs) // 10)
        held, train = convs[:n_held], convs[n_held:]
        for split, items in (("train", train), ("heldout", held)):
            examples = [
                tokenize_conversation(c["messages"], tokenizer, data.sft_max_seq_len, c["tools"]) for c in items
            ]
            write_sft_split(sft_dir, split, examples)
        with (sft_dir / "heldout.jsonl").open("w") as f:
            for c in held:
                f.write(json.dumps({k: v for k, v in c.items() if v is not None}) + "\n")
    barrier(d)
    return sft_dir


def _sft_model(cfg: RecipeConfig, init: Path, d: Dist):
    """The base to fine-tune: all of it (built sharded under FSDP), or frozen
    under a fresh LoRA adapter (each rank loads the base)."""
    import torch

    if not cfg.lora.enabled:
        return load_model(init, sharding_of(cfg.distributed, d))
    model = load_model(init)
    torch.manual_seed(cfg.sft.seed)  # the adapter's A init
    return attach_lora(model, cfg.lora, init, cfg.sft.gradient_checkpointing)


def run_sft(
    cfg: RecipeConfig, run: Path, d: Dist, init: Path | None = None, resume: bool = True, stop_after: int | None = None
) -> dict:
    """Full SFT, or with [lora] enabled an adapter: RUN/sft/final is then a
    PEFT adapter directory for the base `init`."""
    from transformers import AutoTokenizer

    init = init or run / "pretrain" / "final"
    if not (init / "config.json").exists():
        raise FileNotFoundError(f"{init} has no model: run `lemur train pretrain` first or pass --from")
    tokenizer = AutoTokenizer.from_pretrained(str(init))
    sft_dir = prepare_sft(cfg, run, tokenizer, d)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train, heldout = SftDataset(sft_dir, "train", pad), SftDataset(sft_dir, "heldout", pad)
    phase = cfg.sft
    global_batch = phase.micro_batch_size * phase.grad_accum * d.world_size
    total = phase.max_steps or math.ceil(phase.epochs * len(train) / global_batch)
    model = _sft_model(cfg, init, d)
    out = run / "sft"
    result = train_phase(
        name="sft",
        model=model,
        train_data=train,
        eval_data=heldout,
        cfg=phase,
        dist_cfg=cfg.distributed,
        d=d,
        out_dir=out,
        total_steps=total,
        resume=resume,
        stop_after=stop_after,
    )
    summary = {"phase": "sft", **_summary(result), "examples": len(train), "heldout": len(heldout)}
    if cfg.lora.enabled:
        summary["lora"] = {**asdict(cfg.lora), "base": str(init.resolve()), "task": cfg.data.sft_task}
    if result.steps >= total:
        save_pretrained_final(model, tokenizer, out / "final", d)
    if d.is_main:
        kind = f"LoRA r={cfg.lora.rank}" if cfg.lora.enabled else "ChatML SFT"
        plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png", f"{cfg.name}: {kind} (assistant-only loss)")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_recipe(cfg: RecipeConfig, run: Path, export_to: Path | None, resume: bool = True) -> dict:
    from lemur.training.export import export_checkpoint

    d = init_distributed(cfg.distributed)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    summary = {"pretrain": run_pretrain(cfg, run, d, resume), "sft": run_sft(cfg, run, d, resume=resume)}
    if export_to is not None and d.is_main:
        (run / "sft" / "final" / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        export_checkpoint(run / "sft" / "final", export_to)
        summary["exported"] = str(export_to)
    return summary
