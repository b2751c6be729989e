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

The kernel is flash attention over pages: one program per (query tile,
request, query head) walks the request's keys a tile at a time, each token's
page looked up in the block table, with an online softmax in base 2, and
stops at the tile's causal edge (context + its last query). Query tiles past a
request's length exit at once, so one launch covers a varlen batch. The heads
of a GQA group re-read their K/V tiles; prefill is compute bound, and a
group-packed variant is an optimisation for later.

One engine step's attention, choosing between this kernel and paged decode,
is `paged_attention.paged_attention`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lemur.kernels.common import INTERPRET, check, next_power_of_2
from lemur.kernels.paged_decode import LOG2E, _load_page_tile, check_paged_inputs


@triton.jit
def _paged_prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    out_ptr,
    qk_scale,  # softmax scale * log2(e)
    q_tok_stride,
    q_head_stride,
    k_block_stride,
    k_tok_stride,
    k_head_stride,
    v_block_stride,
    v_tok_stride,
    v_head_stride,
    bt_seq_stride,
    out_tok_stride,
    out_head_stride,
    head_dim,
    group,
    PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FP32_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    req = tl.program_id(1)
    head = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + req)
    q_len = tl.load(query_start_loc_ptr + req + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + req)
    if (tile * BLOCK_M >= q_len) | (seq_len == 0):  # past the request, or a request left out (length 0)
        return
    context = seq_len - q_len  # cached tokens before this request's new ones
    kv_head = head // group

    ms = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # query index within the request
    ds = tl.arange(0, BLOCK_D)
    m_mask = ms < q_len
    d_mask = ds < head_dim
    rows = (q_start + ms).to(tl.int64)
    q = tl.load(
        q_ptr + rows[:, None] * q_tok_stride + head * q_head_stride + ds[None, :],
        mask=m_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    if FP32_DOT:
        q = q.to(tl.float32)

    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    bt_row = block_tables_ptr + req.to(tl.int64) * bt_seq_stride
    end = context + tl.minimum((tile + 1) * BLOCK_M, q_len)  # the tile's causal edge: no key past it is read
    for start in range(0, end, BLOCK_N):
        ns = start + tl.arange(0, BLOCK_N)
        n_mask = ns < end
        pages = tl.load(bt_row + ns // PAGE, mask=n_mask, other=0).to(tl.int64)
        slots = ns % PAGE
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = _load_page_tile(k_cache_ptr, pages, slots, kv_head, ds, kv_mask,
                            k_block_stride, k_tok_stride, k_head_stride, FP32_DOT)  # fmt: skip
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N) fp32
        causal = (context + ms)[:, None] >= ns[None, :]
        qk = tl.where(causal & n_mask[None, :], qk, float("-inf"))
        m_new = tl.maximum(m, tl.max(qk, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_sum = l_sum * alpha + tl.sum(p, axis=1)
        v = _load_page_tile(v_cache_ptr, pages, slots, kv_head, ds, kv_mask,
                            v_block_stride, v_tok_stride, v_head_stride, FP32_DOT)  # fmt: skip
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m = m_new

    out = acc / tl.where(l_sum > 0, l_sum, 1.0)[:, None]  # every real row sees key 0: l_sum > 0
    tl.store(
        out_ptr + rows[:, None] * out_tok_stride + head * out_head_stride + ds[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=m_mask[:, None] & d_mask[None, :],
    )


def prefill_config(head_dim: int, dtype: torch.dtype) -> dict[str, int | bool | str]:
    """Meta-parameters of the prefill kernel (shared with the AOT compile
    check). As for decode: bf16 tiles are upcast under the interpreter
    (triton#11584) and fp32 gets IEEE products; fp32 tiles are smaller so that
    they stay in registers."""
    fp32_dot = INTERPRET and dtype == torch.bfloat16
    wide = dtype == torch.float32 or fp32_dot
    return {
        "BLOCK_M": 32 if wide else 64,
        "BLOCK_N": 32 if wide else 64,
        "BLOCK_D": max(16, next_power_of_2(head_dim)),
        "FP32_DOT": fp32_dot,
        "DOT_PRECISION": "ieee" if wide else "tf32",
        # 8 warps: at 4, sm_80 spills (the fp32 accumulator tile and the scores need 255+ registers a thread).
        "num_warps": 8,
        "num_stages": 3,
    }


def paged_prefill_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
    *,
    max_query_len: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of each request's new tokens to its cached ones:
    `(tokens, q_heads, head_dim)`. Requests of length 0 are skipped (their
    rows are not written); `max_query_len` saves a device sync."""
    check_paged_inputs(query, key_cache, value_cache, block_tables, query_start_loc=query_start_loc,
                       seq_lens=seq_lens)  # fmt: skip
    tokens, q_heads, head_dim = query.shape
    page, kv_heads = key_cache.shape[1], key_cache.shape[2]
    requests = seq_lens.shape[0]
    check(block_tables.shape[0] == requests and query_start_loc.shape[0] == requests + 1,
          f"block_tables, query_start_loc and seq_lens disagree on the number of requests ({requests})")  # fmt: skip
    out = torch.empty_like(query) if out is None else out
    check(
        out.shape == query.shape and out.dtype == query.dtype and out.stride(2) == 1,
        "out must match query's shape and dtype",
    )
    if tokens == 0 or requests == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max().item())
    scale = head_dim**-0.5 if scale is None else scale
    cfg = prefill_config(head_dim, query.dtype)
    grid = (triton.cdiv(max(max_query_len, 1), cfg["BLOCK_M"]), requests, q_heads)
    _paged_prefill_kernel[grid](
        query,
        key_cache,
        value_cache,
        block_tables,
        query_start_loc,
        seq_lens,
        out,
        scale * LOG2E,
        query.stride(0),
        query.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        value_cache.stride(0),
        value_cache.stride(1),
        value_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        head_dim,
        q_heads // kv_heads,
        PAGE=page,
        **cfg,
    )
    return out


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
