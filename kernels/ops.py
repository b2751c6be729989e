"""The kernels as PyTorch operators, with a torch fallback.

`torch.ops.lemur.*` wrap the Triton launchers as opaque custom ops, so
`torch.compile` (vLLM's default graph mode on GPUs) treats them like vLLM's own
CUDA ops instead of tracing into the launchers. The plain functions below are
what callers use: they run the Triton op where Triton can run (CUDA, or the
interpreter) and the pure-torch twin anywhere else, with the same in-place
contract either way.
"""

from __future__ import annotations

import torch
from torch.library import custom_op

from lemur.kernels.activation import silu_and_mul as _triton_silu_and_mul
from lemur.kernels.activation import silu_and_mul_reference
from lemur.kernels.common import runs_triton
from lemur.kernels.rmsnorm import fused_add_rmsnorm, fused_add_rmsnorm_reference, rmsnorm, rmsnorm_reference
from lemur.kernels.rotary import rotary_embedding_neox, rotary_embedding_neox_reference


@custom_op("lemur::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return rmsnorm(x, weight, eps)


@_rms_norm_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(x)


@custom_op("lemur::fused_add_rms_norm", mutates_args=("x", "residual"))
def _fused_add_rms_norm_op(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    fused_add_rmsnorm(x, residual, weight, eps, out=x)


@_fused_add_rms_norm_op.register_fake
def _(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    return None


@custom_op("lemur::silu_and_mul", mutates_args=())
def _silu_and_mul_op(x: torch.Tensor) -> torch.Tensor:
    return _triton_silu_and_mul(x)


@_silu_and_mul_op.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


@custom_op("lemur::rotary_embedding_neox", mutates_args=("query", "key"))
def _rotary_op(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
) -> None:
    rotary_embedding_neox(positions, query, key, head_size, cos_sin_cache, rotary_dim)


@_rotary_op.register_fake
def _(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
) -> None:
    return None


def backend_for(t: torch.Tensor) -> str:
    """Which implementation the functions below pick for this tensor."""
    if t.is_cuda:
        return "triton"
    return "triton-interpreter" if runs_triton(t) else "torch"


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if runs_triton(x):
        return torch.ops.lemur.rms_norm(x, weight, eps)
    return rmsnorm_reference(x, weight, eps)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """In place, as vLLM's op: `residual += x`, `x = rmsnorm(residual) * weight`."""
    if runs_triton(x):
        torch.ops.lemur.fused_add_rms_norm(x, residual, weight, eps)
    else:
        out, _ = fused_add_rmsnorm_reference(x, residual, weight, eps)
        x.copy_(out)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    if runs_triton(x):
        return torch.ops.lemur.silu_and_mul(x)
    return silu_and_mul_reference(x)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
) -> None:
    """Neox-style rotary embedding, in place on `query` and `key`."""
    if runs_triton(query):
        torch.ops.lemur.rotary_embedding_neox(positions, query, key, head_size, cos_sin_cache, rotary_dim)
    else:
        rotary_embedding_neox_reference(positions, query, key, head_size, cos_sin_cache, rotary_dim)


__all__ = ["backend_for", "fused_add_rms_norm", "rms_norm", "rotary_embedding", "silu_and_mul"]
