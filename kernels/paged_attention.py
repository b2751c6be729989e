"""One engine step's paged attention: decode-only batches through the paged
decode kernel (paged_decode.py), any other batch through the varlen prefill
kernel (paged_prefill.py); the torch twins where Triton does not run.
"""

from __future__ import annotations

import torch

from lemur.kernels.common import runs_triton
from lemur.kernels.paged_decode import DecodeWorkspace, paged_decode_attention, paged_decode_attention_reference
from lemur.kernels.paged_prefill import paged_prefill_attention, paged_prefill_attention_reference


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    out: torch.Tensor,
    *,
    max_query_len: int,
    max_seq_len: int,
    workspace: DecodeWorkspace | None = None,
) -> torch.Tensor:
    """One step's attention from the host-side maxima vLLM's metadata carries,
    with no device sync (a CUDA graph can capture it):
    - a decode-only batch (max_query_len 1, one row per request): the paged
      decode kernel, split-K sized from (requests, max_seq_len) alone;
    - any other batch: the prefill kernel over every request (a decode request
      is a prefill of length 1), one launch.
    Padded requests (length 0) are skipped."""
    decode_only = max_query_len == 1 and query.shape[0] == seq_lens.shape[0]
    if not runs_triton(query):  # the torch twins (CPU without the interpreter)
        if decode_only:
            out.copy_(paged_decode_attention_reference(query, key_cache, value_cache, block_tables, seq_lens, scale))
            return out
        return paged_prefill_attention_reference(
            query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, scale, out=out
        )
    if decode_only:
        return paged_decode_attention(
            query,
            key_cache,
            value_cache,
            block_tables,
            seq_lens,
            scale,
            max_seq_len=max_seq_len,
            out=out,
            workspace=workspace,
        )
    return paged_prefill_attention(
        query,
        key_cache,
        value_cache,
        block_tables,
        query_start_loc,
        seq_lens,
        scale,
        max_query_len=max_query_len,
        out=out,
    )
