"""Varlen causal attention of new query tokens against the paged KV cache.

The prefill (and chunked-prefill) half of the LEMUR attention backend. A
batch holds requests of any length; request r's new tokens are rows
`query_start_loc[r] : query_start_loc[r + 1]` of `query`, and they sit at the
end of its `seq_lens[r]` cached tokens (the prefix from earlier chunks or the
prefix cache, then themselves: the KV write comes first). New token i of a
request with q_len new tokens may attend to cached positions 0 .. context + i,
where context = seq_len - q_len:

    query           (tokens, q_heads, head_dim)
    key_cache       (num_blocks, block_size, kv_heads, head_dim)   (value_cache alike)
    block_tables    (requests, max_blocks_per_seq) int32
    query_start_loc (requests + 1,) int32
    seq_lens        (requests,) int32

This module holds the torch twin (the Triton kernel, a flash-attention loop
over the request's pages, is the next step of issue 16) and `paged_attention`,
the entry point for a mixed batch: decode requests through the paged decode
kernel in one launch, the others through the prefill path.
"""

from __future__ import annotations

import torch

from kernels.common import runs_triton
from kernels.paged_attention import paged_decode_attention, paged_decode_attention_reference


def paged_prefill_attention_reference(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per request: gather its pages, mask past the causal edge, softmax in fp32."""
    _, q_heads, head_dim = query.shape
    page, kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = q_heads // kv_heads
    scale = head_dim**-0.5 if scale is None else scale
    out = torch.empty_like(query) if out is None else out
    starts, lens = query_start_loc.tolist(), seq_lens.tolist()
    for r, seq_len in enumerate(lens):
        a, b = starts[r], starts[r + 1]
        if b == a or seq_len == 0:
            continue
        pages = block_tables[r, : -(-seq_len // page)].long()
        k = key_cache[pages].flatten(0, 1)[:seq_len].float().repeat_interleave(group, dim=1)  # (N, Hq, D)
        v = value_cache[pages].flatten(0, 1)[:seq_len].float().repeat_interleave(group, dim=1)
        q = query[a:b].float()  # (L, Hq, D)
        scores = torch.einsum("lhd,nhd->hln", q, k) * scale  # (Hq, L, N)
        positions = torch.arange(seq_len, device=query.device)
        last = seq_len - (b - a) + torch.arange(b - a, device=query.device)  # each query's own position
        scores = scores.masked_fill(positions[None, None, :] > last[None, :, None], float("-inf"))
        out[a:b] = torch.einsum("hln,nhd->lhd", scores.softmax(dim=-1), v).to(out.dtype)
    return out


def split_kv_cache(kv_cache: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's CPU layer cache (blocks, kv_heads, block_size, 2 * D) as key and
    value caches (blocks, block_size, kv_heads, D): views, not copies."""
    pages = kv_cache.transpose(1, 2)  # (blocks, block_size, kv_heads, 2 * D)
    return pages[..., :head_dim], pages[..., head_dim:]


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    out: torch.Tensor,
) -> torch.Tensor:
    """A mixed batch: decode requests (one new token) through the paged decode
    kernel in one launch, the others through the prefill path."""
    q_lens = query_start_loc[1:] - query_start_loc[:-1]  # (requests,)
    decode = (q_lens == 1) & (seq_lens > 0)
    triton = runs_triton(query)
    if bool(decode.any()):
        rows = query_start_loc[:-1][decode].long()  # each decode request's one query row
        args = (query[rows], key_cache, value_cache, block_tables[decode], seq_lens[decode], scale)
        out[rows] = paged_decode_attention(*args) if triton else paged_decode_attention_reference(*args)
    prefill = (q_lens > 1) & (seq_lens > 0)
    if bool(prefill.any()):  # the twin skips requests of length 0: decode rows stay as written above
        only = torch.where(prefill, seq_lens, torch.zeros_like(seq_lens))
        paged_prefill_attention_reference(
            query, key_cache, value_cache, block_tables, query_start_loc, only, scale, out=out
        )
    return out
