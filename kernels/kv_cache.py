"""KV-cache write: scatter this step's keys and values into the paged cache.

`slot_mapping[t]` is the flat slot (`block * block_size + offset`) of token
`t`; a negative slot (padding in a captured batch) is skipped. Caches are
`(num_blocks, block_size, kv_heads, head_dim)`, possibly strided views into one
`(2, num_blocks, ...)` allocation as vLLM keeps them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lemur.kernels.common import INDEX_DTYPES, check, check_same_device, check_tensor, next_power_of_2


@triton.jit
def _write_kv_kernel(
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    n_heads,
    head_dim,
    block_size,
    key_tok_stride,
    key_head_stride,
    value_tok_stride,
    value_head_stride,
    kc_block_stride,
    kc_tok_stride,
    kc_head_stride,
    vc_block_stride,
    vc_tok_stride,
    vc_head_stride,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    block = slot // block_size
    offset = slot % block_size
    heads = tl.arange(0, BLOCK_H)
    ds = tl.arange(0, BLOCK_D)
    live_heads = tl.where(slot >= 0, n_heads, 0)  # a padding slot (-1) writes nothing
    mask = (heads < live_heads)[:, None] & (ds < head_dim)[None, :]
    k = tl.load(key_ptr + token * key_tok_stride + heads[:, None] * key_head_stride + ds[None, :], mask=mask)
    v = tl.load(value_ptr + token * value_tok_stride + heads[:, None] * value_head_stride + ds[None, :], mask=mask)
    kc = k_cache_ptr + block * kc_block_stride + offset * kc_tok_stride + heads[:, None] * kc_head_stride + ds[None, :]
    vc = v_cache_ptr + block * vc_block_stride + offset * vc_tok_stride + heads[:, None] * vc_head_stride + ds[None, :]
    tl.store(kc, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(vc, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_config(kv_heads: int, head_dim: int) -> dict[str, int]:
    block_h, block_d = next_power_of_2(kv_heads), next_power_of_2(head_dim)
    return {"BLOCK_H": block_h, "BLOCK_D": block_d, "num_warps": 4 if block_h * block_d <= 2048 else 8}


def write_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """key/value `(tokens, kv_heads, head_dim)` into the caches at `slot_mapping`."""
    for name, t in (("key", key), ("value", value)):
        check_tensor(name, t, ndim=3)
    for name, t in (("key_cache", key_cache), ("value_cache", value_cache)):
        check_tensor(name, t, ndim=4)
    check_tensor("slot_mapping", slot_mapping, ndim=1, dtypes=INDEX_DTYPES)
    check(key.shape == value.shape, f"key {tuple(key.shape)} and value {tuple(value.shape)} differ")
    check(key_cache.shape == value_cache.shape,
          f"key_cache {tuple(key_cache.shape)} and value_cache {tuple(value_cache.shape)} differ")  # fmt: skip
    tokens, kv_heads, head_dim = key.shape
    check(tuple(key_cache.shape[2:]) == (kv_heads, head_dim),
          f"cache holds (kv_heads, head_dim)={tuple(key_cache.shape[2:])}, key has {(kv_heads, head_dim)}")  # fmt: skip
    check(slot_mapping.shape[0] == tokens, f"slot_mapping has {slot_mapping.shape[0]} slots for {tokens} tokens")
    check(key_cache.dtype == value_cache.dtype, "key_cache and value_cache dtypes differ")
    check_same_device(key=key, value=value, key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping)
    if tokens == 0:
        return
    cfg = write_kv_config(kv_heads, head_dim)
    _write_kv_kernel[(tokens,)](
        key, value, key_cache, value_cache, slot_mapping,
        kv_heads, head_dim, key_cache.shape[1],
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        **cfg,
    )  # fmt: skip


def write_kv_reference(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    block_size = key_cache.shape[1]
    blocks, offsets = slots // block_size, slots % block_size
    key_cache[blocks, offsets] = key[valid].to(key_cache.dtype)
    value_cache[blocks, offsets] = value[valid].to(value_cache.dtype)
