"""The training loop shared by pretraining and SFT.

AdamW; warm-up then cosine (pretrain) or linear (SFT) decay; gradient
accumulation and clipping; bf16 autocast on GPU; optional gradient
checkpointing; periodic held-out loss and perplexity; atomic checkpoints that
hold model, optimiser, scheduler, data position and RNG, so that a resumed run
continues exactly where it stopped. Under torchrun each rank takes its slice
of every global batch (DDP or FSDP, see distributed.py).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from training.config import DistributedConfig, PhaseConfig
from training.data import iter_index_batches
from training.distributed import Dist, all_reduce_sum, barrier, unwrap, wrap_model


class BatchSource(Protocol):
    def __len__(self) -> int: ...

    def batch(self, indices: list[int]) -> dict[str, np.ndarray]:
        """input_ids and labels (and optionally attention_mask), each (B, T)."""
        ...


@dataclass(frozen=True)
class PhaseResult:
    steps: int
    final_loss: float
    initial_eval_loss: float | None
    final_eval_loss: float | None
    tokens: int
    seconds: float
    out_dir: Path


def lr_lambda(cfg: PhaseConfig, total_steps: int) -> Callable[[int], float]:
    warmup = max(cfg.warmup_steps, 0)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if cfg.schedule == "cosine":
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule == "linear":
            return 1.0 - progress
        raise ValueError(f"unknown schedule {cfg.schedule!r} (cosine or linear)")

    return factor


def _optimizer(model: torch.nn.Module, cfg: PhaseConfig) -> torch.optim.Optimizer:
    # No weight decay on norms and biases (1-D tensors), as usual for Llama.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-8)


def _autocast(cfg: PhaseConfig, device: torch.device):
    use_bf16 = cfg.bf16 == "true" or (cfg.bf16 == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


def _to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


class _Metrics:
    """metrics.jsonl (main rank only)."""

    def __init__(self, path: Path, enabled: bool, append: bool) -> None:
        self.enabled = enabled
        self.path = path
        if enabled and not append:
            path.write_text("")

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def _state_dicts(model: torch.nn.Module, opt: torch.optim.Optimizer, d: Dist) -> tuple[dict, dict]:
    """Full (unsharded) model and optimiser state on CPU; collective under FSDP."""
    if d.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict(), opt.state_dict()


def _load_state_dicts(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict, d: Dist) -> None:
    if d.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True))  # fmt: skip
        return
    unwrap(model).load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: BatchSource, cfg: PhaseConfig, d: Dist) -> float:
    """Token-weighted mean loss over the first eval_batches x micro_batch rows of
    the held-out set (each rank takes a stride of them)."""
    model.eval()
    n = min(len(data), cfg.eval_batches * cfg.micro_batch_size)
    mine = list(range(d.rank, n, d.world_size))
    loss_sum, count = 0.0, 0.0
    for start in range(0, max(len(mine), 1), cfg.micro_batch_size):
        chunk = mine[start : start + cfg.micro_batch_size]
        if not chunk:
            break
        batch = _to_device(data.batch(chunk), d.device)
        with _autocast(cfg, d.device):
            out = model(**batch)
        tokens = float((batch["labels"][:, 1:] != -100).sum())
        loss_sum += float(out.loss) * tokens
        count += tokens
    model.train()
    loss_sum, count = all_reduce_sum([loss_sum, count], d)
    return loss_sum / max(count, 1.0)


def train_phase(
    *,
    name: str,
    model: torch.nn.Module,
    train_data: BatchSource,
    eval_data: BatchSource | None,
    cfg: PhaseConfig,
    dist_cfg: DistributedConfig,
    d: Dist,
    out_dir: Path,
    total_steps: int,
    resume: bool = True,
    stop_after: int | None = None,
) -> PhaseResult:
    """Train `model` in place for total_steps optimizer steps (or stop early
    after `stop_after` steps, as a crash would, for resume tests)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    wrapped = wrap_model(model, dist_cfg, d)
    opt = _optimizer(wrapped, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps))
    global_batch = cfg.micro_batch_size * cfg.grad_accum * d.world_size
    per_rank = cfg.micro_batch_size * cfg.grad_accum

    ckpt_dir = out_dir / "checkpoints"
    start_step, tokens_seen, initial_eval = 0, 0, None
    found = latest_checkpoint(ckpt_dir) if resume else None
    if found is not None:
        state = load_checkpoint(found)
        _load_state_dicts(wrapped, opt, state, d)
        sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start_step, tokens_seen, initial_eval = state["step"], state["tokens"], state.get("initial_eval_loss")
    else:
        torch.manual_seed(cfg.seed)
    metrics = _Metrics(out_dir / "metrics.jsonl", d.is_main, append=found is not None)
    if eval_data is not None and initial_eval is None and len(eval_data):
        initial_eval = evaluate(wrapped, eval_data, cfg, d)
        metrics.write(
            {"phase": name, "step": 0, "eval_loss": initial_eval, "eval_ppl": math.exp(min(initial_eval, 50))}
        )

    progress = None
    if d.is_main:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=start_step, desc=name, unit="step", dynamic_ncols=True)
    batches = iter_index_batches(len(train_data), global_batch, cfg.seed, start_step)
    t0, last_loss, last_eval = time.perf_counter(), float("nan"), None
    window_tokens, window_t = 0, time.perf_counter()
    step = start_step
    while step < total_steps:
        _, indices = next(batches)  # the generator counts steps in lockstep with `step`
        mine = indices[d.rank * per_rank : (d.rank + 1) * per_rank]
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            rows = mine[micro * cfg.micro_batch_size : (micro + 1) * cfg.micro_batch_size]
            batch = _to_device(train_data.batch(rows), d.device)
            # Only the last micro-batch all-reduces gradients under DDP. One
            # `with` for forward and backward: no_sync() is a generator-based
            # context manager and cannot be entered twice.
            sync = micro == cfg.grad_accum - 1 or not hasattr(wrapped, "no_sync")
            with wrapped.no_sync() if not sync else nullcontext():
                with _autocast(cfg, d.device):
                    loss = wrapped(**batch).loss / cfg.grad_accum
                loss.backward()
            loss_sum += float(loss.detach())
            window_tokens += int(batch["input_ids"].numel()) * d.world_size
        grad_norm = float(torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += global_batch * int(batch["input_ids"].shape[1])
        last_loss = all_reduce_sum([loss_sum], d)[0] / d.world_size

        if step % cfg.log_every == 0 or step == total_steps:
            elapsed = time.perf_counter() - window_t
            tps = window_tokens / max(elapsed, 1e-9)
            metrics.write({"phase": name, "step": step, "loss": last_loss, "lr": sched.get_last_lr()[0],
                           "grad_norm": grad_norm, "tokens": tokens_seen, "tokens_per_s": tps})  # fmt: skip
            window_tokens, window_t = 0, time.perf_counter()
            if progress is not None:
                progress.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tps:,.0f}")
        if progress is not None:
            progress.update(1)
        if eval_data is not None and len(eval_data) and (step % cfg.eval_every == 0 or step == total_steps):
            last_eval = evaluate(wrapped, eval_data, cfg, d)
            metrics.write(
                {"phase": name, "step": step, "eval_loss": last_eval, "eval_ppl": math.exp(min(last_eval, 50))}
            )
        if step % cfg.save_every == 0 or step == total_steps or step == stop_after:
            model_state, opt_state = _state_dicts(wrapped, opt, d)
            if d.is_main:
                state = {"step": step, "tokens": tokens_seen, "model": model_state, "optimizer": opt_state,
                         "scheduler": sched.state_dict(), "rng": _rng_state(), "initial_eval_loss": initial_eval,
                         "loss": last_loss}  # fmt: skip
                save_checkpoint(ckpt_dir, step, state, cfg.keep_checkpoints)
            barrier(d)
        if stop_after is not None and step >= stop_after:
            break
    if progress is not None:
        progress.close()
    return PhaseResult(step, last_loss, initial_eval, last_eval, tokens_seen, time.perf_counter() - t0, out_dir)


def save_pretrained_final(model: torch.nn.Module, tokenizer, path: Path, d: Dist) -> None:
    """Write the trained weights as a Hugging Face directory (collective under FSDP)."""
    if d.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = unwrap(model).state_dict()
    if d.is_main:
        path.mkdir(parents=True, exist_ok=True)
        unwrap(model).save_pretrained(str(path), state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(str(path))
    barrier(d)
