"""What every kernel launcher shares: when Triton runs, input checks, launch sizes.

Triton kernels run on CUDA tensors, or on CPU tensors through Triton's
interpreter when `TRITON_INTERPRET=1` was set before the kernel modules were
imported (that is how CI runs them without a GPU). Anything else gets a clear
`KernelInputError` from the launcher, never a crash inside Triton.
"""

from __future__ import annotations

import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)

# Read once: `triton.jit` decides between compiling and interpreting when the
# kernel modules are imported, so a later change of the variable has no effect.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class KernelInputError(ValueError):
    """A kernel was called with tensors it cannot handle (shape, dtype, device, layout)."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise KernelInputError(message)


def runs_triton(t: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on this tensor here: a CUDA tensor, or a
    CPU tensor under the interpreter."""
    return t.is_cuda or (INTERPRET and t.device.type == "cpu")


def check_tensor(
    name: str,
    t: object,
    *,
    ndim: int | tuple[int, ...] | None = None,
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
    last_dim_contiguous: bool = True,
) -> None:
    check(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    assert isinstance(t, torch.Tensor)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        check(
            t.dim() in allowed,
            f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(t.shape)}",
        )
    check(t.dtype in dtypes, f"{name} has dtype {t.dtype}; supported: {', '.join(str(d) for d in dtypes)}")
    check(
        runs_triton(t),
        f"{name} is on {t.device}: the Triton kernels need a CUDA tensor "
        "(or CPU tensors with TRITON_INTERPRET=1 set before importing kernels)",
    )
    if last_dim_contiguous and t.dim() > 0 and t.shape[-1] > 1:
        check(t.stride(-1) == 1, f"{name} must be contiguous in its last dimension, got strides {t.stride()}")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {str(t.device) for t in tensors.values()}
    check(len(devices) == 1, f"{', '.join(tensors)} must be on one device, got {sorted(devices)}")


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def num_warps_for(block_elements: int) -> int:
    """Warps for a row-wise kernel that holds `block_elements` values per program
    (the same ladder Liger and Unsloth use: more warps for longer rows)."""
    if block_elements >= 32768:
        return 32
    if block_elements >= 8192:
        return 16
    if block_elements >= 2048:
        return 8
    return 4


def rows_per_program(block_n: int, budget: int = 4096) -> int:
    """Several short rows per program, one long row per program: keeps each
    program's tile near `budget` elements (and the interpreter's program count low)."""
    return max(1, min(16, budget // block_n))
