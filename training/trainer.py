"""The training loop shared by pretraining, SFT and LoRA SFT.

AdamW; warm-up then cosine (pretrain) or linear (SFT) decay; gradient
accumulation and clipping; bf16 autocast on GPU; optional gradient
checkpointing; periodic held-out loss and perplexity; atomic checkpoints that
hold model, optimiser, scheduler, data position and RNG, so that a resumed run
continues exactly where it stopped. Under torchrun each rank takes its slice
of every global batch (DDP or FSDP, see distributed.py).

One optimizer step is `accumulate` (forward and backward over the rank's
micro-batches) then `optimizer_step`; `train_phase` only schedules them with
evaluation, checkpoints and logging. The loss and gradient norm stay on the
device between log lines: a `float()` of a CUDA tensor waits for the GPU, so
the host reads them (and ranks all-reduce them) only when a line is written,
as nanoGPT does.

A model with frozen parameters (a LoRA adapter on a base) checkpoints only its
trainable tensors: the frozen base is the run's input, not its state.
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

from lemur.training.checkpoint import (
    commit,
    is_sharded_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    staging_dir,
    staging_path,
    write_synced,
)
from lemur.training.config import DistributedConfig, PhaseConfig
from lemur.training.data import iter_index_batches
from lemur.training.distributed import (
    Dist,
    all_reduce_sum,
    all_reduce_tensor_sum,
    barrier,
    is_sharded,
    unwrap,
    wrap_model,
)
from lemur.training.sharded import load_sharded, save_hf_sharded, save_sharded


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


@dataclass
class Position:
    """Where a phase stands; saved in each checkpoint."""

    step: int = 0
    tokens: int = 0  # tokens seen (padding included), all ranks
    initial_eval: float | None = None


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


def _frozen_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in unwrap(model).named_parameters() if not p.requires_grad}


def _state_dicts(model: torch.nn.Module, opt: torch.optim.Optimizer, d: Dist) -> tuple[dict, dict]:
    """Trainable model state and optimiser state, full (unsharded) on CPU;
    collective across ranks (DDP; an FSDP model checkpoints sharded instead)."""
    if d.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        # A frozen base (LoRA) is not gathered: at 70B that would be the whole model on one host.
        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        model_state, opt_state = get_state_dict(model, opt, options=options)
    else:
        model_state, opt_state = unwrap(model).state_dict(), opt.state_dict()
    frozen = _frozen_names(model)
    return {k: v for k, v in model_state.items() if k not in frozen}, opt_state


def _load_state_dicts(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict, d: Dist) -> None:
    frozen = _frozen_names(model)
    if d.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        options = StateDictOptions(full_state_dict=True, strict=not frozen)
        set_state_dict(
            model, opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=options
        )
        return
    missing, unexpected = unwrap(model).load_state_dict(state["model"], strict=False)
    if unexpected or set(missing) - frozen:
        raise RuntimeError(f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    opt.load_state_dict(state["optimizer"])


class _Log:
    """metrics.jsonl and the progress bar (main rank only); tokens/s over the
    window since the last line."""

    def __init__(self, path: Path, name: str, d: Dist, append: bool, total: int, start: int) -> None:
        self.path, self.name, self.main = path, name, d.is_main
        self.window_tokens, self.window_start = 0, time.perf_counter()
        self.bar = None
        if self.main:
            if not append:
                path.write_text("")
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name, unit="step", dynamic_ncols=True)

    def write(self, row: dict[str, Any]) -> None:
        if self.main:
            with self.path.open("a") as f:
                f.write(json.dumps({"phase": self.name, **row}) + "\n")

    def train(self, step: int, loss: float, grad_norm: float, lr: float, tokens: int) -> None:
        tps = self.window_tokens / max(time.perf_counter() - self.window_start, 1e-9)
        self.write(
            {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": tokens, "tokens_per_s": tps}
        )
        self.window_tokens, self.window_start = 0, time.perf_counter()
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")

    def eval(self, step: int, loss: float) -> None:
        self.write({"step": step, "eval_loss": loss, "eval_ppl": math.exp(min(loss, 50))})

    def advance(self, tokens: int) -> None:
        self.window_tokens += tokens
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: BatchSource, cfg: PhaseConfig, d: Dist) -> float:
    """Token-weighted mean loss over the first eval_batches x micro_batch rows of
    the held-out set (each rank takes a stride of them)."""
    model.eval()
    n = min(len(data), cfg.eval_batches * cfg.micro_batch_size)
    mine = list(range(d.rank, n, d.world_size))
    loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
    count = torch.zeros((), dtype=torch.float64, device=d.device)
    for start in range(0, len(mine), cfg.micro_batch_size):
        batch = _to_device(data.batch(mine[start : start + cfg.micro_batch_size]), d.device)
        with _autocast(cfg, d.device):
            out = model(**batch)
        tokens = (batch["labels"][:, 1:] != -100).sum()
        loss_sum += out.loss.double() * tokens
        count += tokens
    model.train()
    loss_total, count_total = all_reduce_sum([float(loss_sum), float(count)], d)
    return loss_total / max(count_total, 1.0)


def _label_tokens(batch: dict[str, np.ndarray]) -> int:
    """Positions that carry loss (the model shifts labels left by one)."""
    return int((batch["labels"][:, 1:] != -100).sum())


def accumulate(
    model: torch.nn.Module, data: BatchSource, rows: list[int], cfg: PhaseConfig, d: Dist
) -> tuple[torch.Tensor, int]:
    """Forward and backward over this rank's `rows` in grad_accum micro-batches.

    The loss is the mean over every loss-carrying token of the global batch
    (all micro-batches, all ranks), not a mean of per-micro-batch means: SFT
    rows differ in how many assistant tokens they hold, and a mean of means
    would weigh a short answer's tokens more on 2 ranks than on 1. Each
    micro-batch's summed loss is divided by the global token count (an
    all-reduce of host-side counts into a device tensor: no host sync).

    Returns this rank's share of that mean (detached, on the device; the
    ranks' shares sum to the step's loss) and the token positions read
    (padding included)."""
    chunks = [rows[m * cfg.micro_batch_size : (m + 1) * cfg.micro_batch_size] for m in range(cfg.grad_accum)]
    batches = [data.batch(chunk) for chunk in chunks]
    count = torch.tensor(float(sum(_label_tokens(b) for b in batches)), device=d.device)
    total = all_reduce_tensor_sum(count, d).clamp(min=1.0)  # (,) loss-carrying tokens of the global batch
    loss_share = torch.zeros((), device=d.device)
    tokens = 0
    for micro, host_batch in enumerate(batches):
        batch = _to_device(host_batch, d.device)
        # Only the last micro-batch all-reduces gradients under DDP. One `with`
        # for forward and backward: no_sync() is a generator-based context
        # manager and cannot be entered twice.
        last = micro == cfg.grad_accum - 1
        with model.no_sync() if not last and hasattr(model, "no_sync") else nullcontext():
            with _autocast(cfg, d.device):
                loss = model(**batch, num_items_in_batch=total).loss  # summed token losses / total
            # DDP and FSDP average gradients over ranks; the sum over ranks is wanted.
            (loss * d.world_size).backward()
        loss_share += loss.detach().float()
        tokens += batch["input_ids"].numel()
    return loss_share, tokens


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, sched, cfg: PhaseConfig) -> torch.Tensor:
    """Clip, step, schedule, zero; returns the gradient norm before clipping (a device tensor)."""
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return grad_norm.detach()


def _restore(ckpt_dir: Path, model: torch.nn.Module, opt, sched, d: Dist) -> Position | None:
    found = latest_checkpoint(ckpt_dir)
    if found is None:
        return None
    state = load_checkpoint(found)
    if is_sharded_checkpoint(found):
        if not is_sharded(model):
            raise RuntimeError(f"{found} is a sharded (FSDP) checkpoint: resume it with distributed.strategy='fsdp'")
        load_sharded(found, model, opt)
    else:
        _load_state_dicts(model, opt, state, d)
    sched.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return Position(state["step"], state["tokens"], state.get("initial_eval_loss"))


def _checkpoint(ckpt_dir: Path, model: torch.nn.Module, opt, sched, pos: Position, cfg: PhaseConfig, d: Dist) -> None:
    meta = {
        "step": pos.step,
        "tokens": pos.tokens,
        "scheduler": sched.state_dict(),
        "rng": _rng_state(),
        "initial_eval_loss": pos.initial_eval,
    }
    if is_sharded(model):  # every rank writes its own shards; nothing is gathered
        if d.is_main:
            staging_dir(ckpt_dir, pos.step, "sharded")
        barrier(d)
        tmp = staging_path(ckpt_dir, pos.step, "sharded")
        save_sharded(tmp, model, opt)
        if d.is_main:
            write_synced(tmp / "meta.pt", meta)
            commit(ckpt_dir, tmp, pos.step, cfg.keep_checkpoints)
        barrier(d)
        return
    model_state, opt_state = _state_dicts(model, opt, d)  # collective under DDP: every rank
    if d.is_main:
        state = {**meta, "model": model_state, "optimizer": opt_state}
        save_checkpoint(ckpt_dir, pos.step, state, cfg.keep_checkpoints)
    barrier(d)


@dataclass(frozen=True)
class _Due:
    """Which periodic jobs run after a step."""

    cfg: PhaseConfig
    total: int
    stop_after: int | None
    has_eval: bool

    def log(self, step: int) -> bool:
        return step % self.cfg.log_every == 0 or step == self.total

    def eval(self, step: int) -> bool:
        return self.has_eval and (step % self.cfg.eval_every == 0 or step == self.total)

    def save(self, step: int) -> bool:
        return step % self.cfg.save_every == 0 or step == self.total or step == self.stop_after


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
    ckpt_dir = out_dir / "checkpoints"
    pos = _restore(ckpt_dir, wrapped, opt, sched, d) if resume else None
    restored = pos is not None
    if pos is None:
        pos = Position()
        torch.manual_seed(cfg.seed)
    log = _Log(out_dir / "metrics.jsonl", name, d, append=restored, total=total_steps, start=pos.step)
    due = _Due(cfg, total_steps, stop_after, has_eval=eval_data is not None and len(eval_data) > 0)
    if due.has_eval and pos.initial_eval is None:
        pos.initial_eval = evaluate(wrapped, eval_data, cfg, d)
        log.eval(0, pos.initial_eval)

    per_rank = cfg.micro_batch_size * cfg.grad_accum
    batches = iter_index_batches(len(train_data), per_rank * d.world_size, cfg.seed, pos.step)
    t0, last_loss, last_eval = time.perf_counter(), float("nan"), None
    while pos.step < total_steps:
        _, indices = next(batches)  # the generator counts steps in lockstep with pos.step
        loss, tokens = accumulate(wrapped, train_data, indices[d.rank * per_rank : (d.rank + 1) * per_rank], cfg, d)
        grad_norm = optimizer_step(wrapped, opt, sched, cfg)
        pos.step += 1
        pos.tokens += tokens * d.world_size
        log.advance(tokens * d.world_size)
        if due.log(pos.step) or pos.step == stop_after:
            last_loss = float(all_reduce_tensor_sum(loss, d))  # the host waits for the device here only
            if due.log(pos.step):
                log.train(pos.step, last_loss, float(grad_norm), sched.get_last_lr()[0], pos.tokens)
        if due.eval(pos.step):
            last_eval = evaluate(wrapped, eval_data, cfg, d)
            log.eval(pos.step, last_eval)
        if due.save(pos.step):
            _checkpoint(ckpt_dir, wrapped, opt, sched, pos, cfg, d)
        if stop_after is not None and pos.step >= stop_after:
            break
    log.close()
    return PhaseResult(pos.step, last_loss, pos.initial_eval, last_eval, pos.tokens, time.perf_counter() - t0, out_dir)


def save_pretrained_final(model: torch.nn.Module, tokenizer, path: Path, d: Dist) -> None:
    """Write the trained weights as a Hugging Face directory (collective under
    FSDP: from the shards, never gathered). A PEFT model writes its adapter
    (adapter_config.json and adapter_model.safetensors) and no tokenizer: the
    base's is the adapter's."""
    inner = unwrap(model)
    peft = hasattr(inner, "peft_config")
    if is_sharded(model) and not peft:
        save_hf_sharded(model, tokenizer, path, d)
        return
    if d.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # An adapter is small: gathered on rank 0 (its frozen base is not).
        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        state = get_model_state_dict(model, options=options)
    else:
        state = inner.state_dict()
    if d.is_main:
        path.mkdir(parents=True, exist_ok=True)
        inner.save_pretrained(str(path), state_dict=state, safe_serialization=True)
        if not peft:
            tokenizer.save_pretrained(str(path))
    barrier(d)
