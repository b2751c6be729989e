"""vLLM general plugin: Lemur's Triton ops in place of vLLM's own.

Registered as the `lemur_kernels` entry point of the `vllm.general_plugins`
group, which vLLM loads in every process (API server, engine core, workers)
before it builds the model. It does nothing unless `LEMUR_KERNELS=triton` is
set (`lemur serve --kernels triton` sets it), so installing Lemur Serve never
changes a vLLM deployment by itself.
"""

from __future__ import annotations

import os

ENV_VAR = "LEMUR_KERNELS"
CHOICES = ("vllm", "triton")


def requested() -> str:
    value = os.environ.get(ENV_VAR, "vllm").strip().lower() or "vllm"
    if value not in CHOICES:
        raise ValueError(f"{ENV_VAR}={value!r}: expected one of {', '.join(CHOICES)}")
    return value


def register() -> None:
    """Entry point. Safe to call more than once per process."""
    if requested() != "triton":
        return
    from kernels.vllm_ops import register_ops

    register_ops()
