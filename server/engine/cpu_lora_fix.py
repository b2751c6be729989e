"""A fix for vLLM 0.32's CPU LoRA ops: base-model tokens got an adapter.

vLLM marks a token that belongs to no adapter (a base-model request) with the
LoRA index -1. The GPU kernels skip such tokens. The CPU platform's torch ops
(`vllm/lora/ops/torch_ops/lora_ops.py`: bgmv_shrink, bgmv_expand,
bgmv_expand_slice, and the sgmv prefill ops built on them) gather
`weights[indices]` instead, and -1 silently selects the *last* adapter slot.
So once every --max-loras slot holds an adapter, base-model requests batched
with adapter requests are computed with the last slot's adapter: wrong
output, no error (tests/e2e/test_lora.py catches it). Upstream:
vllm-project/vllm#48421 and #49656, open as of vLLM 0.32.

The wrapper below runs an op on the rows whose index is >= 0 only and leaves
the other rows of its output untouched, which is what the GPU kernels do.
Batches with no base token take the original op unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


def skip_base_rows(op: Callable[..., Any]) -> Callable[..., Any]:
    """`op(inputs, weights, output, indices, ...)` on the rows with index >= 0 only."""

    @functools.wraps(op)
    def wrapped(
        inputs: torch.Tensor,
        weights: torch.Tensor,
        output: torch.Tensor,
        indices: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        keep = indices >= 0
        if bool(keep.all()):
            op(inputs, weights, output, indices, *args, **kwargs)
            return
        rows = keep.nonzero().squeeze(1)  # (R,)
        if rows.numel() == 0:
            return
        part = output[rows]  # a copy: the op writes it, then it goes back in place
        op(inputs[rows], weights, part, indices[rows], *args, **kwargs)
        output[rows] = part

    wrapped.lemur_fixed = True  # type: ignore[attr-defined]
    return wrapped


def install() -> bool:
    """Patch the ops where vLLM's CPU LoRA code looks them up. True when
    patched now, False when already patched."""
    from vllm.lora.ops import torch_ops
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    if getattr(lora_ops.bgmv_shrink, "lemur_fixed", False):
        return False
    for name in _OPS:
        fixed = skip_base_rows(getattr(lora_ops, name))
        # lora_ops: the sgmv prefill ops call these by module global;
        # punica_cpu and torch_ops hold their own imported references.
        for module in (lora_ops, torch_ops, punica_cpu):
            if hasattr(module, name):
                setattr(module, name, fixed)
    return True
