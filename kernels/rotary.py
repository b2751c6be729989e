"""Rotary position embedding, GPT-NeoX layout, in place on q and k.

`query` and `key` are usually views into the fused qkv projection's output
(`(tokens, (Hq + 2 * Hkv) * D)` sliced by columns), so rows are strided and
the kernel writes through the views without copying. The first `rotary_dim`
values of each head rotate: with `h = rotary_dim // 2`, `x1 = x[:h]`,
`x2 = x[h:rotary_dim]`, `x1' = x1 cos - x2 sin`, `x2' = x2 cos + x1 sin`.
`cos_sin_cache` is vLLM's: `(max_position, rotary_dim)`, cos then sin.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lemur.kernels.common import INDEX_DTYPES, check, check_same_device, check_tensor, next_power_of_2


@triton.jit
def _rotate_heads(
    x_ptr,
    row_offset,
    head_stride,
    n_heads,
    cos,
    sin,
    half,
    BLOCK_H: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_H)
    js = tl.arange(0, BLOCK_R)
    mask = (heads < n_heads)[:, None] & (js < half)[None, :]
    ptrs = x_ptr + row_offset + heads[:, None] * head_stride + js[None, :]  # (BLOCK_H, BLOCK_R)
    x1 = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptrs + half, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs, (x1 * cos[None, :] - x2 * sin[None, :]).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(ptrs + half, (x2 * cos[None, :] + x1 * sin[None, :]).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_neox_kernel(
    pos_ptr,
    q_ptr,
    k_ptr,
    cache_ptr,
    q_row_stride,
    q_head_stride,
    k_row_stride,
    k_head_stride,
    cache_row_stride,
    n_q_heads,
    n_k_heads,
    half,
    HAS_KEY: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + token).to(tl.int64)
    js = tl.arange(0, BLOCK_R)
    cos = tl.load(cache_ptr + pos * cache_row_stride + js, mask=js < half, other=0.0).to(tl.float32)
    sin = tl.load(cache_ptr + pos * cache_row_stride + half + js, mask=js < half, other=0.0).to(tl.float32)
    _rotate_heads(q_ptr, token * q_row_stride, q_head_stride, n_q_heads, cos, sin, half, BLOCK_HQ, BLOCK_R)
    if HAS_KEY:
        _rotate_heads(k_ptr, token * k_row_stride, k_head_stride, n_k_heads, cos, sin, half, BLOCK_HK, BLOCK_R)


def rotary_config(n_q_heads: int, n_k_heads: int, rotary_dim: int) -> dict[str, int]:
    block_r = next_power_of_2(max(rotary_dim // 2, 1))
    block_hq = next_power_of_2(n_q_heads)
    return {
        "BLOCK_HQ": block_hq,
        "BLOCK_HK": next_power_of_2(max(n_k_heads, 1)),
        "BLOCK_R": block_r,
        "num_warps": 4 if block_hq * block_r <= 2048 else 8,
    }


def _heads_view(name: str, t: torch.Tensor, num_tokens: int, head_size: int) -> torch.Tensor:
    """(tokens, heads * D) or (tokens, heads, D) as a (tokens, heads, D) view."""
    check(t.shape[0] == num_tokens, f"{name} has {t.shape[0]} tokens, positions has {num_tokens}")
    check(t.shape[-1] % head_size == 0 if t.dim() == 2 else t.shape[-1] == head_size,
          f"{name} of shape {tuple(t.shape)} does not hold heads of size {head_size}")  # fmt: skip
    view = t.view(num_tokens, -1, head_size)  # raises for layouts that cannot be viewed in place
    check(view.stride(-1) == 1, f"{name} must be contiguous within each head")
    return view


def rotary_embedding_neox(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotates `query` (and `key`) in place; returns them for convenience."""
    rotary_dim = head_size if rotary_dim is None else rotary_dim
    check_tensor("positions", positions, ndim=1, dtypes=INDEX_DTYPES)
    check_tensor("query", query, ndim=(2, 3))
    check_tensor("cos_sin_cache", cos_sin_cache, ndim=2)
    check(0 < rotary_dim <= head_size and rotary_dim % 2 == 0,
          f"rotary_dim must be even and in 1..head_size ({head_size}), got {rotary_dim}")  # fmt: skip
    check(cos_sin_cache.shape[1] == rotary_dim,
          f"cos_sin_cache has {cos_sin_cache.shape[1]} columns, expected rotary_dim={rotary_dim}")  # fmt: skip
    n = positions.shape[0]
    q = _heads_view("query", query, n, head_size)
    k = q
    if key is not None:
        check_tensor("key", key, ndim=(2, 3))
        check(key.dtype == query.dtype, f"key is {key.dtype}, query is {query.dtype}")
        check_same_device(positions=positions, query=query, key=key, cos_sin_cache=cos_sin_cache)
        k = _heads_view("key", key, n, head_size)
    else:
        check_same_device(positions=positions, query=query, cos_sin_cache=cos_sin_cache)
    if n == 0:
        return query, key
    cfg = rotary_config(q.shape[1], k.shape[1], rotary_dim)
    _rotary_neox_kernel[(n,)](
        positions, q, k, cos_sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin_cache.stride(0),
        q.shape[1], k.shape[1], rotary_dim // 2,
        HAS_KEY=key is not None, **cfg,
    )  # fmt: skip
    return query, key


# ---------------------------------------------------------------- torch twin


def rotary_embedding_neox_reference(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract as the kernel: rotates in place, returns (query, key)."""
    rotary_dim = head_size if rotary_dim is None else rotary_dim
    half = rotary_dim // 2
    cos_sin = cos_sin_cache.index_select(0, positions.long()).float()
    cos, sin = cos_sin[:, None, :half], cos_sin[:, None, half:rotary_dim]  # (T, 1, half)
    for t in (query, key):
        if t is None:
            continue
        heads = t.view(positions.shape[0], -1, head_size)  # (T, H, D)
        x1, x2 = heads[..., :half].float(), heads[..., half:rotary_dim].float()
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        heads[..., :rotary_dim] = rotated.to(t.dtype)
    return query, key
