"""vLLM general plugin: Lemur's Triton ops in place of vLLM's own.

Registered as the `lemur_kernels` entry point of the `vllm.general_plugins`
group, which vLLM loads in every process (API server, engine core, workers)
before it builds the model. It does nothing unless `LEMUR_KERNELS=triton` is
set (`lemur serve --kernels triton` sets it), so installing Lemur Serve never
changes a vLLM deployment by itself. With it, it swaps in our RMSNorm,
SiLU-and-mul and rotary ops, and registers the LEMUR attention backend
(kernels/attention_backend.py: our KV write, paged decode and prefill).
"""

from __future__ import annotations

import logging
import os

ENV_VAR = "LEMUR_KERNELS"
CHOICES = ("vllm", "triton")


def requested() -> str:
    value = os.environ.get(ENV_VAR, "vllm").strip().lower() or "vllm"
    if value not in CHOICES:
        raise ValueError(f"{ENV_VAR}={value!r}: expected one of {', '.join(CHOICES)}")
    return value


def register_attention_backend() -> str:
    """LEMUR as CUSTOM on CUDA (`--attention-backend CUSTOM` selects it), and
    in place of CPU_ATTN on a CPU platform (vLLM asks for CPU_ATTN's class path
    there and honours an override). A string path: nothing heavy is imported
    before vLLM picks a backend."""
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if current_platform.is_cpu():
        register_backend(AttentionBackendEnum.CPU_ATTN, "lemur.kernels.attention_backend.LemurCPUAttentionBackend")
        return "LEMUR (in place of CPU_ATTN)"
    register_backend(AttentionBackendEnum.CUSTOM, "lemur.kernels.attention_backend.LemurAttentionBackend")
    return "LEMUR (as CUSTOM: --attention-backend CUSTOM selects it)"


def register() -> None:
    """Entry point. Safe to call more than once per process."""
    if requested() != "triton":
        return
    from lemur.kernels.vllm_ops import register_ops

    register_ops()
    backend = register_attention_backend()
    logging.getLogger("vllm.lemur_kernels").info("lemur kernels: attention backend %s", backend)
