"""Mixed batches against the paged KV cache (the LEMUR backend's math):
decode, prefill and chunked-prefill requests in one batch, checked against
dense causal attention on the same tokens laid out contiguously.

Under the interpreter (no GPU) the Triton kernels run on CPU tensors."""

from __future__ import annotations

import pytest
import torch

from lemur.kernels.kv_cache import write_kv_reference
from lemur.kernels.paged_attention import paged_attention
from lemur.kernels.paged_prefill import paged_prefill_attention_reference, split_kv_cache
from tests.kernels.conftest import DEVICE, DTYPES, assert_close


def dense_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q (L, Hq, D) as the last L of the N tokens of k, v (N, Hkv, D); fp32 SDPA."""
    group = q.shape[1] // k.shape[1]
    k, v = k.float().repeat_interleave(group, 1), v.float().repeat_interleave(group, 1)
    n, length = k.shape[0], q.shape[0]
    mask = torch.arange(n)[None, :] <= (n - length + torch.arange(length))[:, None]  # (L, N)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask.to(q.device), scale=scale
    )
    return out.transpose(0, 1)


def make_batch(
    requests: list[tuple[int, int]],
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    page: int,
    dtype: torch.dtype,
    seed: int = 0,
):
    """(seq_len, q_len) per request. Each request's tokens are written into
    pages scattered at random; every slot no request owns is NaN."""
    g = torch.Generator().manual_seed(seed)
    max_blocks = max(-(-s // page) for s, _ in requests) + 1
    num_blocks = len(requests) * max_blocks + 2
    kc = torch.full((num_blocks, page, kv_heads, head_dim), float("nan"), dtype=dtype)
    vc = torch.full_like(kc, float("nan"))
    tables = torch.randperm(num_blocks, generator=g)[: len(requests) * max_blocks].view(len(requests), max_blocks)
    keys, values, queries, starts = [], [], [], [0]
    for r, (seq_len, q_len) in enumerate(requests):
        k = torch.randn(seq_len, kv_heads, head_dim, generator=g).to(dtype)
        v = torch.randn(seq_len, kv_heads, head_dim, generator=g).to(dtype)
        slots = tables[r, torch.arange(seq_len) // page].long() * page + torch.arange(seq_len) % page
        write_kv_reference(k, v, kc, vc, slots)
        keys.append(k), values.append(v)
        queries.append(torch.randn(q_len, q_heads, head_dim, generator=g).to(dtype))
        starts.append(starts[-1] + q_len)
    batch = (
        torch.cat(queries),
        kc,
        vc,
        tables.int(),
        torch.tensor(starts, dtype=torch.int32),
        torch.tensor([s for s, _ in requests], dtype=torch.int32),
    )
    return tuple(t.to(DEVICE) for t in batch), keys, values


CASES = {
    "decode only": [(37, 1), (1, 1), (130, 1)],
    "prefill only": [(9, 9), (40, 40)],
    "mixed": [(50, 1), (33, 33), (200, 1), (17, 17)],
    "chunked, prefix over many pages": [(150, 7), (90, 30), (5, 1)],
    "padded request": [(12, 12), (0, 0), (20, 1)],
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("q_heads", "kv_heads"), [(4, 4), (8, 2), (16, 2)])  # GQA 1, 4, 8
@pytest.mark.parametrize("page", [16, 32])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_batch_equals_dense_causal_attention(
    case: str, q_heads: int, kv_heads: int, page: int, dtype: torch.dtype
) -> None:
    requests = CASES[case]
    (q, kc, vc, tables, starts, lens), keys, values = make_batch(requests, q_heads, kv_heads, 32, page, dtype)
    scale = 32**-0.5
    out = torch.full_like(q, float("nan"))
    maxima = {"max_query_len": max(x for _, x in requests), "max_seq_len": max(x for x, _ in requests)}
    paged_attention(q, kc, vc, tables, starts, lens, scale, out, **maxima)
    for r, (_, q_len) in enumerate(requests):
        a, b = int(starts[r]), int(starts[r + 1])
        if q_len == 0:
            continue
        expected = dense_causal(q[a:b].cpu(), keys[r], values[r], scale)
        assert_close(out[a:b].cpu(), expected, dtype)


def test_prefill_twin_alone_matches_and_leaves_other_rows() -> None:
    requests = [(64, 16), (8, 8)]
    (q, kc, vc, tables, starts, lens), keys, values = make_batch(requests, 8, 2, 64, 16, torch.float32, seed=3)
    out = torch.zeros_like(q)
    only_first = torch.tensor([64, 0], dtype=torch.int32, device=lens.device)
    paged_prefill_attention_reference(q, kc, vc, tables, starts, only_first, 64**-0.5, out=out)
    assert_close(out[:16].cpu(), dense_causal(q[:16].cpu(), keys[0], values[0], 64**-0.5), torch.float32)
    assert torch.equal(out[16:], torch.zeros_like(out[16:]))  # a request of length 0 is skipped


def test_split_kv_cache_views_vllms_cpu_layout() -> None:
    """vLLM's CPU layer cache (blocks, kv_heads, block_size, 2 * D): our key
    and value caches are views of it, so writes through them land in place."""
    blocks, kv_heads, page, head_dim = 3, 2, 16, 8
    kv = torch.zeros(blocks, kv_heads, page, 2 * head_dim)
    key_cache, value_cache = split_kv_cache(kv, head_dim)
    assert key_cache.shape == value_cache.shape == (blocks, page, kv_heads, head_dim)
    assert key_cache.stride(3) == 1 and key_cache.data_ptr() == kv.data_ptr()
    k, v = torch.ones(1, kv_heads, head_dim), 2 * torch.ones(1, kv_heads, head_dim)
    write_kv_reference(k, v, key_cache, value_cache, torch.tensor([page + 5]))  # block 1, slot 5
    assert torch.equal(kv[1, :, 5, :head_dim], torch.ones(kv_heads, head_dim))
    assert torch.equal(kv[1, :, 5, head_dim:], 2 * torch.ones(kv_heads, head_dim))
    assert kv.sum() == 3 * kv_heads * head_dim  # nothing else was touched


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_kernel_at_lemur_70b_shapes_with_a_long_prefix(dtype: torch.dtype) -> None:
    """TP 8's per-GPU heads (8 query heads on 1 KV head, head_dim 128), a
    chunk of 70 new tokens (three query tiles) after 230 cached ones spread
    over 19 pages, beside a short whole prompt."""
    from lemur.kernels.paged_prefill import paged_prefill_attention

    requests = [(300, 70), (21, 21)]
    (q, kc, vc, tables, starts, lens), keys, values = make_batch(requests, 8, 1, 128, 16, dtype, seed=5)
    out = paged_prefill_attention(q, kc, vc, tables, starts, lens, 128**-0.5, max_query_len=70)
    for r in range(len(requests)):
        a, b = int(starts[r]), int(starts[r + 1])
        assert_close(out[a:b].cpu(), dense_causal(q[a:b].cpu(), keys[r], values[r], 128**-0.5), dtype)


def test_prefill_launcher_checks_its_inputs() -> None:
    from lemur.kernels.common import KernelInputError
    from lemur.kernels.paged_prefill import paged_prefill_attention

    (q, kc, vc, tables, starts, lens), _, _ = make_batch([(10, 4)], 4, 2, 32, 16, torch.float32)
    with pytest.raises(KernelInputError, match="multiple of kv_heads"):
        paged_prefill_attention(q[:, :3], kc, vc, tables, starts, lens)
    with pytest.raises(KernelInputError, match="number of requests"):
        paged_prefill_attention(q, kc, vc, tables, starts[:1], lens)
    with pytest.raises(KernelInputError, match="dtypes must match"):
        paged_prefill_attention(q.half(), kc, vc, tables, starts, lens)
    with pytest.raises(KernelInputError, match="block_tables"):
        paged_prefill_attention(q, kc, vc, tables.float(), starts, lens)
