"""LEMUR: a vLLM attention backend on Lemur's own paged-attention kernels.

`--kernels triton` registers it (kernels/vllm_plugin.py). What it runs:
- the KV write: `kernels.kv_cache` (slots < 0, padding and dummy runs, are skipped);
- decode requests (one new token): `kernels.paged_decode`'s paged decode,
  with split-K for long contexts over few sequences;
- prefill and chunked-prefill requests (several new tokens against the
  cached prefix): `kernels.paged_prefill`.
Batches mix both (chunked prefill is on by default), so a step with any
prefill runs the prefill kernel over every request (a decode is a prefill of
one token) and a decode-only step the decode kernel.

One backend, one builder and one implementation serve every platform:
- CUDA: registered as CUSTOM, chosen with `--attention-backend CUSTOM`.
- CPU: vLLM's CPU platform always asks for CPU_ATTN's class path and honours
  an override of it, so the same classes register there under a subclass
  that keeps the name CPU_ATTN (vLLM maps backends by enum name). The CPU
  engine thus runs exactly the builder, metadata and `forward` the GPU runs,
  with the kernels as Triton under TRITON_INTERPRET=1, else as torch twins.

vLLM hands each layer its cache as a logical `(num_blocks, kv_heads,
block_size, 2 * head_dim)` tensor whose memory order is one of the layouts
the backend declares (LBHNC, then LBNHC: each page's bytes stay together).
`split_kv_cache` views it as our kernels' `(num_blocks, block_size,
kv_heads, head_dim)` key and value caches; the kernels take any strides with
head_dim contiguous, so no layout needs a copy. LEMUR writes the cache
itself, so the order inside a page is ours, not that of vLLM's kernels.

CUDA graphs. vLLM captures decode-only batches as full graphs
(`UNIFORM_SINGLE_TOKEN_DECODE`); steps with a prefill run attention outside
the graphs (piecewise). What that asks of `forward`, and how it holds
(tested on CPU in tests/kernels/test_graph_safety.py and
tests/kernels/test_attention_backend.py):
- One attention launch chosen from host-side integers the metadata already
  carries (`max_query_len`, `max_seq_len`, the number of requests). No
  `.item()`, `.tolist()`, `.cpu()` or `bool(tensor)` on the way, so nothing
  waits for the device and capture never syncs.
- The split count comes from (batch size, max_seq_len) on the host, so it is
  fixed per captured batch size. vLLM captures with max_seq_len =
  max_model_len, so a graph is split for the longest context; a replay with
  shorter sequences leaves some splits empty, and the merge skips them
  (tests/kernels/test_paged_decode.py forces empty splits). Were a
  max_seq_len ever understated, the last split still runs to each
  sequence's end. Padded requests (seq_len 0) are skipped by the kernel.
- Split-K partials, log-sum-exps and the fused merge's counters live in a
  `DecodeWorkspace` the builder allocates once (per KV-cache group) and
  hands to every step's metadata; the fused
  merge leaves the counters at zero, so every replay starts clean, and
  `forward` allocates nothing. Its size is max_num_seqs x q_heads x splits
  x head_dim fp32, splits being the most `choose_num_splits` picks at
  max_model_len (16 at 4k): 8 MiB for lemur-70b at TP 8 with vLLM's default
  128 sequences, 64 MiB with 1024. vLLM sizes the KV cache before builders
  exist, so this comes out of the headroom gpu_memory_utilization leaves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
)
from vllm.v1.attention.backends.utils import get_num_attention_heads_from_layers
from vllm.v1.kv_cache_layout import KVCacheLayout

from lemur.kernels.common import runs_triton
from lemur.kernels.kv_cache import write_kv, write_kv_reference
from lemur.kernels.ops import backend_for
from lemur.kernels.paged_attention import paged_attention
from lemur.kernels.paged_decode import DecodeWorkspace, max_splits_for
from lemur.kernels.paged_prefill import split_kv_cache

logger = logging.getLogger("vllm.lemur_kernels")
NAME = "LEMUR"


@dataclass
class LemurAttentionMetadata:
    """One step's attention inputs, shared by every layer of a KV-cache group."""

    num_actual_tokens: int  # tokens in the step, padding excluded
    max_query_len: int  # host-side: picks the kernel
    max_seq_len: int  # host-side: sizes split-K
    query_start_loc: torch.Tensor  # (R + 1,) int32
    seq_lens: torch.Tensor  # (R,) int32, 0 for padded requests
    block_table: torch.Tensor  # (R, max_pages) int32
    slot_mapping: torch.Tensor  # (T,) int64, < 0 for padding
    workspace: DecodeWorkspace  # split-K buffers, allocated once by the builder


def allocate_workspace(kv_cache_spec, layer_names: list[str], vllm_config, device: torch.device) -> DecodeWorkspace:
    """Split-K buffers for the most sequences a step can hold, on this group's
    heads (per rank), for the most splits `choose_num_splits` can pick at
    max_model_len (the launcher never asks for more than a workspace holds)."""
    model = vllm_config.model_config
    q_heads = get_num_attention_heads_from_layers(vllm_config, layer_names) or model.get_num_attention_heads(
        vllm_config.parallel_config
    )
    max_seqs = vllm_config.scheduler_config.max_num_seqs
    splits = max_splits_for(model.max_model_len)
    return DecodeWorkspace.allocate(
        max_seqs, q_heads, kv_cache_spec.num_kv_heads, kv_cache_spec.head_size, device, max_splits=splits
    )


class LemurMetadataBuilder(AttentionMetadataBuilder[LemurAttentionMetadata]):
    """CommonAttentionMetadata -> LemurAttentionMetadata: references, no copies."""

    # Full graphs for decode-only batches; a step with a prefill runs piecewise.
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE

    def __init__(self, kv_cache_spec, layer_names: list[str], vllm_config, device: torch.device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.workspace = allocate_workspace(kv_cache_spec, layer_names, vllm_config, device)

    def build(
        self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata, fast_build: bool = False
    ) -> LemurAttentionMetadata:
        m = common_attn_metadata
        if m.causal is not True:  # a tensor (dynamic causality) or False: not decoder attention
            raise NotImplementedError(f"the {NAME} attention backend runs causal decoder attention only")
        return LemurAttentionMetadata(
            num_actual_tokens=m.num_actual_tokens,
            max_query_len=m.max_query_len,
            max_seq_len=m.max_seq_len,
            query_start_loc=m.query_start_loc,
            seq_lens=m.seq_lens,
            block_table=m.block_table_tensor,
            slot_mapping=m.slot_mapping,
            workspace=self.workspace,
        )


class LemurAttentionImpl(AttentionImpl[LemurAttentionMetadata]):
    """Our kernels for the cache write and for attention."""

    announced = False  # the engine log says once per process what serves attention

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int | None = None,
        alibi_slopes: list[float] | None = None,
        sliding_window: int | None = None,
        kv_cache_dtype: str = "auto",
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        sinks: torch.Tensor | None = None,
    ) -> None:
        dtypes = LemurAttentionBackend.supported_kv_cache_dtypes
        unsupported = {
            "alibi slopes": alibi_slopes is not None,
            "sliding window": sliding_window not in (None, -1),
            "logits soft cap": bool(logits_soft_cap),
            "attention sinks": sinks is not None,
            "non-decoder attention": attn_type != AttentionType.DECODER,
            f"KV cache dtype {kv_cache_dtype} (only 'auto', the model's)": kv_cache_dtype not in dtypes,
            "KV sharing across layers": kv_sharing_target_layer_name is not None,
        }
        missing = [name for name, used in unsupported.items() if used]
        if missing:
            raise NotImplementedError(f"the {NAME} attention backend does not support {', '.join(missing)}")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        """key, value: (T, kv_heads, D), written to the slots vLLM assigned."""
        key_cache, value_cache = split_kv_cache(kv_cache, self.head_size)
        n = slot_mapping.shape[0]  # the step's tokens; key/value may carry graph padding past them
        write = write_kv if runs_triton(key) else write_kv_reference
        write(key[:n], value[:n], key_cache, value_cache, slot_mapping)

    def forward(
        self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None, output_block_scale=None
    ):
        """query: (T, q_heads, D); output: (T, q_heads, D) written in place."""
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError(f"the {NAME} attention backend does not fuse output quantization")
        if attn_metadata is None:  # profiling and dummy runs: no garbage downstream
            return output.fill_(0)
        if not LemurAttentionImpl.announced:
            LemurAttentionImpl.announced = True
            logger.info("lemur kernels: attention backend %s runs on %s (%s)", NAME, backend_for(query), query.dtype)
        m: LemurAttentionMetadata = attn_metadata
        n = m.num_actual_tokens
        key_cache, value_cache = split_kv_cache(kv_cache, self.head_size)
        paged_attention(
            query[:n],
            key_cache,
            value_cache,
            m.block_table,
            m.query_start_loc,
            m.seq_lens,
            self.scale,
            output[:n],
            max_query_len=m.max_query_len,
            max_seq_len=m.max_seq_len,
            workspace=m.workspace,
        )
        return output


class LemurAttentionBackend(AttentionBackend):
    """LEMUR as vLLM's CUSTOM backend (`--attention-backend CUSTOM`)."""

    forward_includes_kv_cache_update: bool = False  # do_kv_cache_update runs first
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list] = ["auto"]  # the model's dtype: the kernels read K/V as they read Q

    @staticmethod
    def get_name() -> str:
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[LemurAttentionImpl]:
        return LemurAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[LemurMetadataBuilder]:
        return LemurMetadataBuilder

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        # Any head_dim computes (masked tiles); these are the ones tested: 32 and
        # 64 under the interpreter, 128 there and AOT-compiled for sm_80/sm_90.
        return [32, 64, 128]

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == AttentionType.DECODER

    @classmethod
    def supported_kv_cache_layouts(cls) -> tuple[KVCacheLayout, ...]:
        return (KVCacheLayout.LBHNC, KVCacheLayout.LBNHC)

    @classmethod
    def supports_compute_capability(cls, capability) -> bool:
        return capability.major >= 8  # compiled and checked for sm_80 and sm_90 (kernels/aot.py)


class LemurCPUAttentionBackend(LemurAttentionBackend):
    """The same backend under CPU_ATTN's name, which a CPU platform always asks for."""

    @staticmethod
    def get_name() -> str:
        return "CPU_ATTN"
