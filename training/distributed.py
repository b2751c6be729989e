"""torchrun integration: process group, device, and model wrapping (DDP or FSDP).

Single process when not launched by torchrun. FSDP uses PyTorch's
`fully_shard` on every decoder layer and the root (the 70b preset's setting);
DDP replicates the model (small presets, and the CPU gloo test).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lemur.training.config import DistributedConfig


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(cfg: DistributedConfig) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if cuda else "gloo")
        dist.init_process_group(backend=backend)
    return Dist(rank, world, local, device)


def shard(model: torch.nn.Module, cfg: DistributedConfig) -> None:
    """fully_shard on every decoder layer (found by class, so that a PEFT-wrapped
    model shards the same way) and on the root."""
    from torch.distributed.fsdp import fully_shard

    for layer in [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]:
        fully_shard(layer, reshard_after_forward=cfg.reshard_after_forward)
    fully_shard(model, reshard_after_forward=cfg.reshard_after_forward)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def wrap_model(model: torch.nn.Module, cfg: DistributedConfig, d: Dist) -> torch.nn.Module:
    if is_sharded(model):  # built sharded (training/sharded.py): already on its device
        return model
    model.to(d.device)
    if not d.enabled:
        return model
    if cfg.strategy == "fsdp":
        shard(model, cfg)
        return model
    if cfg.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    raise ValueError(f"unknown distributed strategy {cfg.strategy!r} (ddp or fsdp)")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_tensor_sum(value: torch.Tensor, d: Dist) -> torch.Tensor:
    """The sum of a tensor over ranks (the tensor itself on one process); no host sync."""
    if not d.enabled:
        return value
    t = value.detach().clone()
    dist.all_reduce(t)
    return t


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
