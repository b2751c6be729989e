"""The GPU table of `lemur plan`: memory, HBM bandwidth and dense bf16 tensor
throughput of the data-centre GPUs people rent for serving.

Memory is nvidia-smi's total where known, else the datasheet figure. vLLM
applies --gpu-memory-utilization to the total CUDA reports
(torch.cuda.mem_get_info()[1]), which can be a little lower; where it is, the
plan's KV cache is overstated by utilization x the difference (docs/sizing.md).
Bandwidth and flops are the vendors' nominal datasheet numbers (dense, no
sparsity); measured figures are lower.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIB = 1024**2


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: int
    bandwidth_tb_s: float
    dense_tflops: float
    aliases: tuple[str, ...] = ()


GPUS: dict[str, GpuSpec] = {
    "h100-sxm": GpuSpec("NVIDIA H100 80GB SXM", 81559 * MIB, 3.35, 989, ("h100", "h100-80gb", "h100-80gb-sxm")),
    "h100-pcie": GpuSpec("NVIDIA H100 80GB PCIe", 81559 * MIB, 2.0, 756, ("h100-80gb-pcie",)),
    "h100-nvl": GpuSpec("NVIDIA H100 NVL 94GB", 95830 * MIB, 3.9, 835, ("h100-94gb",)),
    "h200": GpuSpec("NVIDIA H200 141GB", 143771 * MIB, 4.8, 989, ("h200-sxm", "h200-141gb")),
    "b200": GpuSpec("NVIDIA B200 180GB", 183359 * MIB, 8.0, 2250, ("b200-180gb",)),
    "a100-80gb": GpuSpec("NVIDIA A100 80GB SXM", 81920 * MIB, 2.039, 312, ("a100", "a100-80gb-sxm", "a100-sxm4-80gb")),
    "a100-40gb": GpuSpec("NVIDIA A100 40GB SXM", 40960 * MIB, 1.555, 312, ("a100-40gb-sxm", "a100-sxm4-40gb")),
    "l40s": GpuSpec("NVIDIA L40S 48GB", 46068 * MIB, 0.864, 362, ("l40s-48gb",)),
    "l4": GpuSpec("NVIDIA L4 24GB", 23034 * MIB, 0.3, 121, ("l4-24gb",)),
    "a10": GpuSpec("NVIDIA A10 24GB", 23028 * MIB, 0.6, 125, ("a10-24gb", "a10g")),
    "mi300x": GpuSpec("AMD Instinct MI300X 192GB", 196608 * MIB, 5.3, 1307, ("mi300x-192gb",)),
}


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def find_gpu(name: str) -> GpuSpec:
    """Look a GPU up by key, alias or full name, ignoring case and punctuation:
    "h100", "H100 80GB SXM", "NVIDIA H100 80GB SXM" all find the H100 SXM."""
    wanted = _norm(name)
    for key, spec in GPUS.items():
        names = (key, spec.name, spec.name.removeprefix("NVIDIA ").removeprefix("AMD "), *spec.aliases)
        if wanted in {_norm(n) for n in names}:
            return spec
    raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")
