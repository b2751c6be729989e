"""LEMUR: a vLLM attention backend on Lemur's own paged-attention kernels.

`--kernels triton` registers it (kernels/vllm_plugin.py). What it runs:
- the KV write: `kernels.kv_cache` (slots < 0, padding and dummy runs, are skipped);
- decode requests (one new token): `kernels.paged_attention`'s paged decode,
  with split-K for long contexts over few sequences;
- prefill and chunked-prefill requests (several new tokens against the
  cached prefix): `kernels.paged_prefill`.
Batches mix both (chunked prefill is on by default and vLLM's CPU runner does
not reorder them), so each step splits the batch by query length.

On a CPU platform vLLM always asks for the CPU_ATTN backend's class path and
honours an override of it, so LEMUR registers there, keeps CPU_ATTN's name,
builder and metadata (sequence lengths, block table, query start offsets),
and replaces the implementation. vLLM's CPU KV cache per layer is
`(num_blocks, kv_heads, block_size, 2 * head_dim)`; `split_kv_cache` views
it as our kernels' `(num_blocks, block_size, kv_heads, head_dim)` key and
value caches (no copy). LEMUR writes the cache itself, so the layout inside a
page is ours, not the packed one of vLLM's C++ CPU kernels.

On CPUs the kernels run as Triton under TRITON_INTERPRET=1, else as their
torch twins.

CUDA graphs (the design the CUDA class, registered as CUSTOM, will follow;
the host side is already written this way and tested in
tests/kernels/test_graph_safety.py):
- A step is one attention launch chosen from host-side integers vLLM's
  metadata already carries (`max_query_len`, `max_seq_len`, the number of
  requests): decode-only batches (what vLLM captures) take the paged decode
  kernel, anything else the prefill kernel. No `.item()`, `.tolist()`,
  `.cpu()` or `bool(tensor)` on the way, so nothing waits for the device.
- The split count comes from (captured batch size, max_seq_len) on the host,
  so it is fixed per captured batch size; a replay with longer sequences
  loses no tokens (the last split always runs to the sequence's end).
- Split-K partials, log-sum-exps and the fused merge's counters live in a
  `DecodeWorkspace` allocated once (per KV-cache group, by the metadata
  builder) for max_num_seqs x MAX_SPLITS; the fused merge leaves the counters
  at zero, so every replay starts clean, and `forward` allocates nothing.
  (The CPU class here passes no workspace: split-K buffers are allocated per
  step, which costs nothing that matters on a CPU.)
"""

from __future__ import annotations

import logging

from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

from kernels.common import runs_triton
from kernels.kv_cache import write_kv, write_kv_reference
from kernels.ops import backend_for
from kernels.paged_prefill import paged_attention, split_kv_cache

logger = logging.getLogger("vllm.lemur_kernels")
NAME = "LEMUR"


class LemurCPUAttentionImpl(CPUAttentionBackendImpl):
    """CPU_ATTN's implementation with our kernels for the cache write and attention."""

    announced = False  # the engine log says once per process what serves attention

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        unsupported = {
            "alibi slopes": self.alibi_slopes is not None,
            "sliding window": self.sliding_window not in (None, -1),
            "logits soft cap": bool(self.logits_soft_cap),
            "attention sinks": self.sinks is not None,
            "non-decoder attention": str(self.attn_type).lower().split(".")[-1] != "decoder",
            "fp8 KV cache": self.is_fp8_kv_cache,
        }
        missing = [name for name, used in unsupported.items() if used]
        if missing:
            raise NotImplementedError(f"the {NAME} attention backend does not support {', '.join(missing)}")

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        key_cache, value_cache = split_kv_cache(kv_cache, self.head_size)
        n = slot_mapping.shape[0]
        write = write_kv if runs_triton(key) else write_kv_reference
        write(key[:n], value[:n], key_cache, value_cache, slot_mapping)

    def forward(
        self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None, output_block_scale=None
    ):
        if attn_metadata is None:  # profiling and dummy runs
            return output
        n = attn_metadata.num_actual_tokens
        if not LemurCPUAttentionImpl.announced:
            LemurCPUAttentionImpl.announced = True
            logger.info("lemur kernels: attention backend %s runs on %s (%s)", NAME, backend_for(query), query.dtype)
        key_cache, value_cache = split_kv_cache(kv_cache, self.head_size)
        paged_attention(
            query[:n],
            key_cache,
            value_cache,
            attn_metadata.block_table,
            attn_metadata.query_start_loc,
            attn_metadata.seq_lens,
            self.scale,
            output[:n],
            max_query_len=attn_metadata.max_query_len,
            max_seq_len=attn_metadata.max_seq_len,
        )
        return output


class LemurCPUAttentionBackend(CPUAttentionBackend):
    """Keeps the name CPU_ATTN (vLLM maps backends by enum name) and its builder."""

    @staticmethod
    def get_impl_cls() -> type[LemurCPUAttentionImpl]:
        return LemurCPUAttentionImpl
