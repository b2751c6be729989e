"""Kernel tests run unchanged on a GPU or, without one, on CPU tensors through
Triton's interpreter. `triton.jit` picks interpreter or compiler when the kernel
modules are imported, so the variable is set here, before any test module of
this directory imports them."""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    if "lemur.kernels.common" in sys.modules and not sys.modules["lemur.kernels.common"].INTERPRET:
        raise pytest.UsageError("kernels.* were imported before TRITON_INTERPRET=1 could be set")
    os.environ["TRITON_INTERPRET"] = "1"

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Per-dtype tolerances (atol = rtol): fp32 math inside, one rounding at the end.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, tol_scale: float = 1.0) -> None:
    tol = TOL[dtype] * tol_scale
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol, rtol=tol)
