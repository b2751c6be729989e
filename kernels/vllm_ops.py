"""Out-of-tree replacements for vLLM's RMSNorm, SiluAndMul and RotaryEmbedding.

`CustomOp.register_oot` makes vLLM instantiate these subclasses wherever a
model asks for the originals. They override the CUDA and CPU paths; on a CPU
without the Triton interpreter they run the torch twins (so the plugin never
breaks a CPU server). Cases our kernels don't cover (a norm without weight, a
variance over part of the hidden size, a fused norm on strided tensors, GPT-J-style
rotary, no key) go to vLLM's own implementation. The ops are enabled even where vLLM's graph mode
would turn custom ops off: the user asked for them by name.
"""

from __future__ import annotations

import torch
from vllm.logger import init_logger
from vllm.model_executor.custom_op import CustomOp, op_registry_oot
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

from lemur.kernels import ops

logger = init_logger("vllm.plugins.lemur_kernels")
_announced: set[str] = set()


def _announce(op: str, t: torch.Tensor) -> None:
    """One log line per op and process, at its first eager call: proof of use.
    Skipped while torch.compile traces (Dynamo cannot trace a logging call, and
    vLLM compiles with fullgraph=True)."""
    if op not in _announced and not torch.compiler.is_compiling():
        _announced.add(op)
        logger.info("lemur kernels: %s runs on %s (%s)", op, ops.backend_for(t), t.dtype)


class LemurRMSNorm(RMSNorm):
    @classmethod
    def enabled(cls) -> bool:
        return True

    def forward_cuda(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        in_place_ok = residual is None or (x.is_contiguous() and residual.is_contiguous())
        if self.variance_size_override is not None or not self.has_weight or not in_place_ok:
            return self.forward_native(x, residual)
        _announce("RMSNorm", x)
        if residual is None:
            return ops.rms_norm(x, self.weight.data, self.variance_epsilon)
        ops.fused_add_rms_norm(x, residual, self.weight.data, self.variance_epsilon)
        return x, residual

    forward_cpu = forward_cuda


class LemurSiluAndMul(SiluAndMul):
    @classmethod
    def enabled(cls) -> bool:
        return True

    def forward_cuda(self, x: torch.Tensor) -> torch.Tensor:
        _announce("SiluAndMul", x)
        return ops.silu_and_mul(x)

    forward_cpu = forward_cuda


class LemurRotaryEmbedding(RotaryEmbedding):
    @classmethod
    def enabled(cls) -> bool:
        return True

    def forward_cuda(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.is_neox_style or key is None:
            return self.forward_native(positions, query, key)
        _announce("RotaryEmbedding", query)
        cos_sin_cache = self._match_cos_sin_cache_dtype(query)
        ops.rotary_embedding(positions.flatten(), query, key, self.head_size, cos_sin_cache, self.rotary_dim)
        return query, key

    forward_cpu = forward_cuda


REPLACEMENTS: dict[str, type[CustomOp]] = {
    "RMSNorm": LemurRMSNorm,
    "SiluAndMul": LemurSiluAndMul,
    "RotaryEmbedding": LemurRotaryEmbedding,
}


def register_ops() -> None:
    """Registers every replacement once per process (vLLM may load plugins twice)."""
    for name, cls in REPLACEMENTS.items():
        if name not in op_registry_oot:
            CustomOp.register_oot(cls, name=name)
    logger.info("lemur kernels registered for %s", ", ".join(REPLACEMENTS))
