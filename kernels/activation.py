"""SiLU-and-mul, the SwiGLU activation of Llama's MLP.

The gate and up projections come out of one fused matmul as `x = [gate | up]`
(`(..., 2 * d)`); the kernel reads both halves once and writes
`silu(gate) * up` (`(..., d)`), computed in fp32 and rounded once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lemur.kernels.common import (
    check,
    check_same_device,
    check_tensor,
    next_power_of_2,
    num_warps_for,
    rows_per_program,
)

MAX_BLOCK_N = 1024


@triton.jit
def _silu_and_mul_kernel(
    x_ptr,
    out_ptr,
    n_rows,
    d,
    x_row_stride,
    out_row_stride,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < d)[None, :]
    rows = rows.to(tl.int64)
    gate_ptrs = x_ptr + rows[:, None] * x_row_stride + cols[None, :]
    gate = tl.load(gate_ptrs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_ptrs + d, mask=mask, other=0.0).to(tl.float32)
    y = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + rows[:, None] * out_row_stride + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul_config(d: int) -> dict[str, int]:
    block_n = min(next_power_of_2(d), MAX_BLOCK_N)
    block_m = rows_per_program(block_n, budget=2048)
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps_for(block_m * block_n)}


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`silu(x[..., :d]) * x[..., d:]` with `d = x.shape[-1] // 2`."""
    check_tensor("x", x)
    check(x.dim() >= 1 and x.shape[-1] % 2 == 0, f"x's last dimension must be even (gate | up), got {tuple(x.shape)}")
    d = x.shape[-1] // 2
    out_shape = (*x.shape[:-1], d)
    if out is None:
        out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    check_tensor("out", out)
    check(tuple(out.shape) == out_shape, f"out has shape {tuple(out.shape)}, expected {out_shape}")
    check_same_device(x=x, out=out)
    x2 = x.reshape(-1, 2 * d)
    out2 = out.reshape(-1, d)
    if out.numel() > 0:
        check(out2.data_ptr() == out.data_ptr(), "out must be viewable as (rows, d)")
    n_rows = x2.shape[0]
    if n_rows == 0 or d == 0:
        return out
    cfg = silu_and_mul_config(d)
    grid = (triton.cdiv(n_rows, cfg["BLOCK_M"]), triton.cdiv(d, cfg["BLOCK_N"]))
    _silu_and_mul_kernel[grid](x2, out2, n_rows, d, x2.stride(0), out2.stride(0), **cfg)
    return out


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    xf = x.float()
    return (torch.nn.functional.silu(xf[..., :d]) * xf[..., d:]).to(x.dtype)
