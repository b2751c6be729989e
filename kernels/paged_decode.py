"""Paged decode attention with grouped-query heads and a split-K variant.

One new query token per sequence attends to that sequence's cached keys and
values, which live in fixed-size pages (`block_size` tokens) found through
`block_tables`:

    query        (seqs, q_heads, head_dim)
    key_cache    (num_blocks, block_size, kv_heads, head_dim)   (value_cache alike)
    block_tables (seqs, max_blocks_per_seq) int32
    seq_lens     (seqs,) int32, tokens cached per sequence (the new one included)

Decode is memory bound: the whole KV history is read once per step. So one
program handles one KV head and all `group = q_heads / kv_heads` query heads
that share it (8 for lemur-70b): each K/V tile is loaded once and used by the
whole group. The group is padded to 16 rows so both products are `tl.dot`s
(tensor cores need M, N, K >= 16). Softmax is online (running max and sum, in
base 2). With few sequences and long contexts a grid of `seqs x kv_heads`
programs leaves most SMs idle, so the split-K variant (flash-decoding) also
splits each sequence's tokens over `num_splits` programs, and a second small
kernel merges their partial outputs by their log-sum-exp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lemur.kernels.common import INDEX_DTYPES, INTERPRET, check, check_same_device, check_tensor, next_power_of_2

LOG2E = 1.4426950408889634
CTAS_PER_SM = 3  # resident decode programs per SM on sm_90 at 4 warps, 5 stages (registers, shared memory)
MIN_TILES_PER_SPLIT = 4
MAX_SPLITS = 64


@triton.jit
def _load_page_tile(
    cache_ptr, pages, slots, kv_head, ds, mask, block_stride, tok_stride, head_stride, FP32_DOT: tl.constexpr
):
    """One KV head's rows for a tile of tokens, each from its own page: (TILE_N, BLOCK_D)."""
    rows = cache_ptr + pages[:, None] * block_stride + slots[:, None] * tok_stride + kv_head * head_stride
    tile = tl.load(rows + ds[None, :], mask=mask, other=0.0)
    if FP32_DOT:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _paged_decode_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    out_ptr,  # (seqs, q_heads, head_dim), or partials (seqs, q_heads, splits, head_dim) when SPLIT
    lse_ptr,  # (seqs, q_heads, splits) fp32, written only when SPLIT
    merged_ptr,  # (seqs, q_heads, head_dim): the merged output, written only when FUSED
    counter_ptr,  # (seqs, kv_heads) int32 zeros: splits finished, used only when FUSED (reset to 0 after)
    qk_scale,  # softmax scale * log2(e)
    q_seq_stride,
    q_head_stride,
    k_block_stride,
    k_tok_stride,
    k_head_stride,
    v_block_stride,
    v_tok_stride,
    v_head_stride,
    bt_seq_stride,
    out_seq_stride,
    out_head_stride,
    out_split_stride,
    lse_seq_stride,
    lse_head_stride,
    merged_seq_stride,
    merged_head_stride,
    head_dim,
    group,
    tokens_per_split,
    num_splits,
    max_tokens,  # block-table width x page size: nothing past it is ever read
    PAGE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TILE_N: tl.constexpr,
    SPLIT: tl.constexpr,
    FUSED: tl.constexpr,
    FP32_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    start = split * tokens_per_split
    # The last split runs to the sequence's end whatever the caller's max_seq_len
    # said, so an understated max_seq_len costs balance, never tokens.
    end = tl.where(split == num_splits - 1, seq_len, tl.minimum(seq_len, start + tokens_per_split))
    end = tl.minimum(end, max_tokens)

    hs = tl.arange(0, BLOCK_H)
    ds = tl.arange(0, BLOCK_D)
    h_mask = hs < group
    d_mask = ds < head_dim
    q_heads = kv_head * group + hs  # (BLOCK_H,)
    q = tl.load(
        q_ptr + seq * q_seq_stride + q_heads[:, None] * q_head_stride + ds[None, :],
        mask=h_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # (BLOCK_H, BLOCK_D)
    if FP32_DOT:
        q = q.to(tl.float32)

    m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_sum = tl.zeros([BLOCK_H], dtype=tl.float32)  # running sum of exp2
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * bt_seq_stride
    for tile_start in range(start, end, TILE_N):
        toks = tile_start + tl.arange(0, TILE_N)
        t_mask = toks < end
        # A tile spans one or more pages (or part of one): look up each token's page.
        pages = tl.load(bt_row + toks // PAGE, mask=t_mask, other=0).to(tl.int64)
        slots = toks % PAGE
        kv_mask = t_mask[:, None] & d_mask[None, :]
        k = _load_page_tile(k_cache_ptr, pages, slots, kv_head, ds, kv_mask,
                            k_block_stride, k_tok_stride, k_head_stride, FP32_DOT)  # fmt: skip
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_H, TILE_N) fp32
        qk = tl.where(t_mask[None, :], qk, float("-inf"))
        m_new = tl.maximum(m, tl.max(qk, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_sum = l_sum * alpha + tl.sum(p, axis=1)
        v = _load_page_tile(v_cache_ptr, pages, slots, kv_head, ds, kv_mask,
                            v_block_stride, v_tok_stride, v_head_stride, FP32_DOT)  # fmt: skip
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m = m_new

    # An empty split (start >= seq_len) leaves l_sum == 0: write zeros and lse -inf.
    safe_l = tl.where(l_sum > 0, l_sum, 1.0)
    out = acc / safe_l[:, None]
    out_ptrs = out_ptr + seq * out_seq_stride + q_heads[:, None] * out_head_stride + ds[None, :]
    if SPLIT:
        out_ptrs += split * out_split_stride
        lse = tl.where(l_sum > 0, m + tl.log2(safe_l), float("-inf"))
        tl.store(lse_ptr + seq * lse_seq_stride + q_heads * lse_head_stride + split, lse, mask=h_mask)
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=h_mask[:, None] & d_mask[None, :])
    if FUSED:
        # The last split of this (sequence, KV head) to finish merges all of them: no second launch.
        # acq_rel: this program's partials are visible before it is counted, and the others' after.
        counter = counter_ptr + seq * tl.num_programs(1) + kv_head
        # Every warp's stores of the partials come before the count: the atomic runs in one thread,
        # and its release orders only what that thread's block has finished (the CUTLASS semaphore pattern).
        tl.debug_barrier()
        if tl.atomic_add(counter, 1, sem="acq_rel") == num_splits - 1:
            _merge_group(out_ptr, lse_ptr, merged_ptr, seq, q_heads, hs, ds, h_mask, d_mask, num_splits,
                         out_seq_stride, out_head_stride, out_split_stride, lse_seq_stride, lse_head_stride,
                         merged_seq_stride, merged_head_stride, BLOCK_H, BLOCK_D)  # fmt: skip
            tl.atomic_xchg(counter, 0)  # ready for the next launch (a replayed CUDA graph reuses the buffer)


@triton.jit
def _merge_group(partial_ptr, lse_ptr, merged_ptr, seq, q_heads, hs, ds, h_mask, d_mask, num_splits,
                 p_seq_stride, p_head_stride, p_split_stride, lse_seq_stride, lse_head_stride,
                 merged_seq_stride, merged_head_stride, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """A GQA group's partial outputs merged by their log-sum-exp, one split at a
    time (the group x splits x head_dim block would not fit in registers)."""
    lse_row = lse_ptr + seq * lse_seq_stride + q_heads * lse_head_stride  # (BLOCK_H,) pointers
    lse_max = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    for s in range(num_splits):
        lse_max = tl.maximum(lse_max, tl.load(lse_row + s, mask=h_mask, other=float("-inf"), cache_modifier=".cg"))
    total = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    parts = partial_ptr + seq * p_seq_stride + q_heads[:, None] * p_head_stride + ds[None, :]
    for s in range(num_splits):
        lse = tl.load(lse_row + s, mask=h_mask, other=float("-inf"), cache_modifier=".cg")
        weight = tl.where(lse > float("-inf"), tl.exp2(lse - lse_max), 0.0)  # an empty split weighs 0
        part = tl.load(parts + s * p_split_stride, mask=h_mask[:, None] & d_mask[None, :], other=0.0,
                       cache_modifier=".cg")  # fmt: skip
        acc += part * weight[:, None]
        total += weight
    out = acc / tl.where(total > 0, total, 1.0)[:, None]
    tl.store(merged_ptr + seq * merged_seq_stride + q_heads[:, None] * merged_head_stride + ds[None, :],
             out.to(merged_ptr.dtype.element_ty), mask=h_mask[:, None] & d_mask[None, :])  # fmt: skip


@triton.jit
def _merge_splits_kernel(
    partial_ptr,  # (seqs, q_heads, splits, head_dim) fp32
    lse_ptr,  # (seqs, q_heads, splits) fp32, log2 units
    out_ptr,  # (seqs, q_heads, head_dim)
    num_splits,
    head_dim,
    p_seq_stride,
    p_head_stride,
    p_split_stride,
    lse_seq_stride,
    lse_head_stride,
    out_seq_stride,
    out_head_stride,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    ss = tl.arange(0, BLOCK_S)
    ds = tl.arange(0, BLOCK_D)
    s_mask = ss < num_splits
    lse = tl.load(lse_ptr + seq * lse_seq_stride + head * lse_head_stride + ss, mask=s_mask, other=float("-inf"))
    lse_max = tl.max(lse, axis=0)
    weights = tl.where(s_mask & (lse > float("-inf")), tl.exp2(lse - lse_max), 0.0)  # (BLOCK_S,)
    parts = tl.load(
        partial_ptr + seq * p_seq_stride + head * p_head_stride + ss[:, None] * p_split_stride + ds[None, :],
        mask=s_mask[:, None] & (ds < head_dim)[None, :],
        other=0.0,
    )  # (BLOCK_S, BLOCK_D)
    total = tl.sum(weights, axis=0)
    out = tl.sum(parts * weights[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq * out_seq_stride + head * out_head_stride + ds, out.to(out_ptr.dtype.element_ty),
             mask=ds < head_dim)  # fmt: skip


@dataclass(frozen=True)
class DecodeWorkspace:
    """Split-K buffers, allocated once: a captured CUDA graph replays fixed
    addresses, and `forward` must not allocate. The fused merge leaves the
    counters at zero after every launch."""

    partial: torch.Tensor  # (max_seqs, q_heads, max_splits, head_dim) fp32
    lse: torch.Tensor  # (max_seqs, q_heads, max_splits) fp32
    counters: torch.Tensor  # (max_seqs * kv_heads,) int32

    @classmethod
    def allocate(cls, max_seqs: int, q_heads: int, kv_heads: int, head_dim: int, device: torch.device,
                 max_splits: int = MAX_SPLITS) -> DecodeWorkspace:  # fmt: skip
        f32 = {"dtype": torch.float32, "device": device}
        return cls(torch.empty((max_seqs, q_heads, max_splits, head_dim), **f32),
                   torch.empty((max_seqs, q_heads, max_splits), **f32),
                   torch.zeros(max_seqs * kv_heads, dtype=torch.int32, device=device))  # fmt: skip

    def views(self, seqs: int, q_heads: int, kv_heads: int, head_dim: int, splits: int) -> tuple[torch.Tensor, ...]:
        max_seqs, ws_heads, max_splits, ws_dim = self.partial.shape
        check((ws_heads, ws_dim) == (q_heads, head_dim) and self.counters.numel() == max_seqs * kv_heads,
              f"workspace is for {ws_heads} heads of {ws_dim}, not {q_heads} of {head_dim}")  # fmt: skip
        check(seqs <= max_seqs and splits <= max_splits,
              f"workspace holds {max_seqs} sequences x {max_splits} splits, asked for {seqs} x {splits}")  # fmt: skip
        return self.partial[:seqs, :, :splits], self.lse[:seqs, :, :splits], self.counters


def check_paged_inputs(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    **index_tensors: torch.Tensor,
) -> None:
    """What every paged-attention launcher needs: query (rows, q_heads, D),
    caches (blocks, page, kv_heads, D) of query's dtype, int index tensors
    (block_tables and the named 1-D ones), one device, head_dim contiguous."""
    check_tensor("query", query, ndim=3)
    check_tensor("key_cache", key_cache, ndim=4)
    check_tensor("value_cache", value_cache, ndim=4)
    check_tensor("block_tables", block_tables, ndim=2, dtypes=INDEX_DTYPES)
    for name, t in index_tensors.items():
        check_tensor(name, t, ndim=1, dtypes=INDEX_DTYPES)
    check_same_device(query=query, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables,
                      **index_tensors)  # fmt: skip
    q_heads, head_dim = query.shape[1], query.shape[2]
    kv_heads, cache_head_dim = key_cache.shape[2], key_cache.shape[3]
    check(key_cache.shape == value_cache.shape,
          f"key_cache {tuple(key_cache.shape)} and value_cache {tuple(value_cache.shape)} differ")  # fmt: skip
    check(cache_head_dim == head_dim, f"cache head_dim {cache_head_dim} != query head_dim {head_dim}")
    check(key_cache.dtype == value_cache.dtype == query.dtype,
          f"query, key_cache and value_cache dtypes must match, got {query.dtype}, {key_cache.dtype}, "
          f"{value_cache.dtype}")  # fmt: skip
    check(kv_heads > 0 and q_heads % kv_heads == 0, f"q_heads {q_heads} is not a multiple of kv_heads {kv_heads}")
    check(query.stride(2) == 1 and key_cache.stride(3) == 1 and value_cache.stride(3) == 1,
          "head_dim must be contiguous in query and caches")  # fmt: skip


def decode_config(group: int, head_dim: int, dtype: torch.dtype, tile_n: int = 64) -> dict[str, int | bool]:
    """Meta-parameters of the decode kernel (shared with the AOT compile check).
    The interpreter computes bf16 `tl.dot` wrongly (triton#11584), so there the
    tiles are upcast to fp32 first; compiled kernels keep the input dtype. fp32
    inputs get IEEE products: a GPU's default for fp32 `tl.dot` is TF32 (10-bit
    mantissa), far from fp32 accuracy."""
    check(tile_n >= 16 and tile_n & (tile_n - 1) == 0, f"tile_n must be a power of two >= 16, got {tile_n}")
    fp32_dot = INTERPRET and dtype == torch.bfloat16
    return {
        "BLOCK_H": max(16, next_power_of_2(group)),
        "BLOCK_D": max(16, next_power_of_2(head_dim)),
        "TILE_N": tile_n,
        "FP32_DOT": fp32_dot,
        "DOT_PRECISION": "ieee" if dtype == torch.float32 or fp32_dot else "tf32",
        # fp32 IEEE products hold more in registers: 8 warps keep them from spilling.
        "num_warps": 8 if dtype == torch.float32 else 4,
        # 5 stages: the page-table lookup takes one pipeline stage, and K/V need two
        # more to be double-buffered (with 3, each tile is awaited before any math).
        "num_stages": 5,
    }


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 8  # the interpreter: any small number exercises the same code


def choose_num_splits(
    num_seqs: int, kv_heads: int, max_seq_len: int, device: torch.device, tile_n: int = 64, sms: int | None = None
) -> int:
    """Splits per sequence from a small cost model: a grid of `seqs x kv_heads x
    splits` programs runs in waves of `sms x CTAS_PER_SM`; a wave lasts as long
    as one program's share of the tiles; a merge costs about one tile-wave. It
    spreads few long sequences over the GPU and avoids a last, mostly idle wave.
    At least MIN_TILES_PER_SPLIT tiles per split, and no split left empty."""
    sms = _sm_count(device) if sms is None else sms
    slots = sms * CTAS_PER_SM
    programs = max(1, num_seqs * kv_heads)
    tiles = triton.cdiv(max(max_seq_len, 1), tile_n)
    if programs >= 4 * slots:
        return 1  # four or more full waves already: the last one's idle share is small

    def cost(splits: int) -> int:
        return triton.cdiv(programs * splits, slots) * triton.cdiv(tiles, splits) + (splits > 1)

    candidates = range(1, max_splits_for(max_seq_len, tile_n) + 1)
    best = min(candidates, key=lambda s: (cost(s), s))
    return balanced_splits(tiles, best)


def max_splits_for(max_seq_len: int, tile_n: int = 64) -> int:
    """The most splits `choose_num_splits` can pick for sequences up to `max_seq_len`."""
    return max(1, min(MAX_SPLITS, triton.cdiv(max(max_seq_len, 1), tile_n) // MIN_TILES_PER_SPLIT))


def balanced_splits(tiles: int, splits: int) -> int:
    """Drops splits that would get no tiles: 9 splits of 64 tiles need only 8 of 8."""
    return triton.cdiv(tiles, triton.cdiv(tiles, max(1, splits)))


def paged_decode_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
    *,
    max_seq_len: int | None = None,
    num_splits: int | None = None,
    tile_n: int = 64,
    out: torch.Tensor | None = None,
    fused_merge: bool = True,
    workspace: DecodeWorkspace | None = None,
) -> torch.Tensor:
    """Attention output `(seqs, q_heads, head_dim)`. `num_splits=None` picks
    split-K automatically (1 = the single-pass kernel); `max_seq_len` saves a
    device sync when the caller knows it. Split-K merges inside the decode
    kernel (the last split of each group merges); `fused_merge=False` runs the
    two-kernel version (decode, then a merge launch), kept as its twin.
    `workspace`: split-K buffers allocated once (CUDA graphs); without it
    they are allocated per call."""
    check_paged_inputs(query, key_cache, value_cache, block_tables, seq_lens=seq_lens)
    seqs, q_heads, head_dim = query.shape
    page, kv_heads = key_cache.shape[1], key_cache.shape[2]
    rows = (block_tables.shape[0], seq_lens.shape[0])
    check(rows == (seqs, seqs), f"block_tables and seq_lens have {rows} rows for {seqs} queries")
    group = q_heads // kv_heads
    scale = head_dim**-0.5 if scale is None else scale
    if out is None:
        out = torch.empty_like(query)
    check(out.shape == query.shape and out.dtype == query.dtype and out.stride(2) == 1,
          "out must match query's shape and dtype")  # fmt: skip
    if seqs == 0:
        return out
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max().item())
    check(max_seq_len <= block_tables.shape[1] * page,
          f"max_seq_len {max_seq_len} exceeds the block table's {block_tables.shape[1]} pages of {page}")  # fmt: skip
    cfg = decode_config(group, head_dim, query.dtype, tile_n)
    splits = choose_num_splits(seqs, kv_heads, max_seq_len, query.device, tile_n) if num_splits is None else num_splits
    check(splits >= 1, f"num_splits must be >= 1, got {splits}")
    if workspace is not None:  # fewer splits than asked is still exact: the last one runs to each sequence's end
        splits = min(splits, workspace.partial.shape[2])
    tiles = triton.cdiv(max(max_seq_len, 1), tile_n)
    splits = balanced_splits(tiles, splits)
    tokens_per_split = triton.cdiv(tiles, splits) * tile_n
    max_tokens = block_tables.shape[1] * page

    common = (
        query.stride(0), query.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0),
    )  # fmt: skip
    if splits == 1:
        _paged_decode_kernel[(seqs, kv_heads, 1)](
            query, key_cache, value_cache, block_tables, seq_lens, out, out, out, seq_lens, scale * LOG2E,
            *common, out.stride(0), out.stride(1), 0, 0, 0, 0, 0,
            head_dim, group, tokens_per_split, 1, max_tokens, PAGE=page, SPLIT=False, FUSED=False, **cfg,
        )  # fmt: skip
        return out

    if workspace is None:
        workspace = DecodeWorkspace.allocate(seqs, q_heads, kv_heads, head_dim, query.device, max_splits=splits)
    partial, lse, counters = workspace.views(seqs, q_heads, kv_heads, head_dim, splits)
    _paged_decode_kernel[(seqs, kv_heads, splits)](
        query, key_cache, value_cache, block_tables, seq_lens, partial, lse, out, counters, scale * LOG2E,
        *common, partial.stride(0), partial.stride(1), partial.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1),
        head_dim, group, tokens_per_split, splits, max_tokens, PAGE=page, SPLIT=True, FUSED=fused_merge, **cfg,
    )  # fmt: skip
    if not fused_merge:
        _merge_splits_kernel[(seqs, q_heads)](
            partial, lse, out, splits, head_dim,
            partial.stride(0), partial.stride(1), partial.stride(2), lse.stride(0), lse.stride(1),
            out.stride(0), out.stride(1),
            BLOCK_S=next_power_of_2(splits), BLOCK_D=next_power_of_2(head_dim),
        )  # fmt: skip
    return out


# ---------------------------------------------------------------- torch twin


def paged_decode_attention_reference(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Gathers every sequence's pages, then plain masked softmax attention in fp32."""
    _, q_heads, head_dim = query.shape
    kv_heads = key_cache.shape[2]
    scale = head_dim**-0.5 if scale is None else scale
    group = q_heads // kv_heads
    k = key_cache[block_tables.long()].flatten(1, 2).float()  # (S, max_blocks * page, Hkv, D)
    v = value_cache[block_tables.long()].flatten(1, 2).float()
    k = k.repeat_interleave(group, dim=2)  # (S, N, Hq, D)
    v = v.repeat_interleave(group, dim=2)
    positions = torch.arange(k.shape[1], device=query.device)
    valid = positions[None, :] < seq_lens[:, None].long()  # (S, N)
    # Whatever lies past a sequence's end (stale or NaN pages) must not leak in.
    k = torch.where(valid[:, :, None, None], k, 0.0)
    v = torch.where(valid[:, :, None, None], v, 0.0)
    scores = torch.einsum("shd,snhd->shn", query.float(), k) * scale  # (S, Hq, N)
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    probs = torch.nan_to_num(scores.softmax(dim=-1), nan=0.0)  # an empty sequence attends to nothing: 0
    out = torch.einsum("shn,snhd->shd", probs, v)
    return out.to(query.dtype)
