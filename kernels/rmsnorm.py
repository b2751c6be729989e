"""RMSNorm and fused residual-add + RMSNorm.

`fused_add_rmsnorm(x, residual, weight, eps)` is the op between every two
sublayers of a Llama block: `residual <- x + residual` (in place) and
`out <- rmsnorm(residual) * weight`, in one pass over memory instead of three.
The statistics and the product are computed in fp32; the sum is stored back in
the residual's dtype (as vLLM does) but normalised from its fp32 value.
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

MAX_HIDDEN = 65536


@triton.jit
def _rmsnorm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    n_rows,
    n_cols,
    x_row_stride,
    res_row_stride,
    out_row_stride,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    col_mask = cols < n_cols
    mask = row_mask[:, None] & col_mask[None, :]
    rows = rows.to(tl.int64)  # row * stride overflows int32 for large caches of rows

    x = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        res_ptrs = res_ptr + rows[:, None] * res_row_stride + cols[None, :]
        x += tl.load(res_ptrs, mask=mask, other=0.0).to(tl.float32)
        tl.store(res_ptrs, x.to(res_ptr.dtype.element_ty), mask=mask)

    mean_square = tl.sum(x * x, axis=1) / n_cols  # (BLOCK_M,)
    rstd = 1.0 / tl.sqrt(mean_square + eps)
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = x * rstd[:, None] * w[None, :]
    tl.store(out_ptr + rows[:, None] * out_row_stride + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def rmsnorm_config(n_cols: int) -> dict[str, int]:
    """Launch sizes for rows of `n_cols` values (shared with the AOT compile check)."""
    block_n = next_power_of_2(n_cols)
    block_m = rows_per_program(block_n)
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps_for(block_m * block_n)}


def _as_rows(name: str, t: torch.Tensor, hidden: int, *, written: bool) -> torch.Tensor:
    """`t` as (rows, hidden). Tensors the kernel writes must reshape to a view
    (a copy would swallow the writes); inputs may be copied."""
    check(t.shape[-1] == hidden, f"{name} has last dimension {t.shape[-1]}, expected {hidden}")
    rows = t.reshape(-1, hidden)
    if written and t.numel() > 0:
        check(rows.data_ptr() == t.data_ptr(), f"{name} must be viewable as (rows, {hidden}) to be written in place")
    return rows.contiguous() if rows.stride(-1) != 1 else rows


def _launch(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float, out: torch.Tensor
) -> None:
    check_tensor("x", x)
    check_tensor("weight", weight, ndim=1)
    check_tensor("out", out)
    hidden = weight.shape[0]
    check(0 < hidden <= MAX_HIDDEN, f"hidden size {hidden} is outside 1..{MAX_HIDDEN}")
    check(out.shape == x.shape, f"out has shape {tuple(out.shape)}, x has {tuple(x.shape)}")
    check(eps > 0, f"eps must be positive, got {eps}")
    x2, out2 = _as_rows("x", x, hidden, written=False), _as_rows("out", out, hidden, written=True)
    res2 = x2
    if residual is not None:
        check_tensor("residual", residual)
        check(residual.shape == x.shape, f"residual has shape {tuple(residual.shape)}, x has {tuple(x.shape)}")
        res2 = _as_rows("residual", residual, hidden, written=True)
        check_same_device(x=x, residual=residual, weight=weight, out=out)
    else:
        check_same_device(x=x, weight=weight, out=out)
    n_rows = x2.shape[0]
    if n_rows == 0:
        return
    cfg = rmsnorm_config(hidden)
    grid = (triton.cdiv(n_rows, cfg["BLOCK_M"]),)
    _rmsnorm_kernel[grid](
        x2, res2, weight, out2, n_rows, hidden,
        x2.stride(0), res2.stride(0), out2.stride(0), eps,
        HAS_RESIDUAL=residual is not None, **cfg,
    )  # fmt: skip


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5, out: torch.Tensor | None = None) -> torch.Tensor:
    """`x / sqrt(mean(x**2) + eps) * weight` over the last dimension."""
    out = torch.empty_like(x) if out is None else out
    _launch(x, None, weight, eps, out)
    return out


def fused_add_rmsnorm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-5,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`residual += x` in place, then returns `rmsnorm(residual) * weight`
    (written into `out`; pass `out=x` to normalise in place as vLLM does)."""
    out = torch.empty_like(x) if out is None else out
    _launch(x, residual, weight, eps, out)
    return out


# ---------------------------------------------------------------- torch twins


def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.float()
    return y.to(x.dtype)


def fused_add_rmsnorm_reference(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (normalised output, new residual); updates `residual` in place like the kernel."""
    total = x.float() + residual.float()
    residual.copy_(total.to(residual.dtype))
    y = total * torch.rsqrt(total.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.float()
    return y.to(x.dtype), residual
