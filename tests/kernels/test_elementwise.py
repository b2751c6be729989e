"""RMSNorm, fused add-RMSNorm, SiLU-and-mul, rotary and KV-cache write against
their torch twins, over odd shapes, strided views and three dtypes."""

from __future__ import annotations

import pytest
import torch

from lemur.kernels.activation import silu_and_mul, silu_and_mul_reference
from lemur.kernels.common import KernelInputError
from lemur.kernels.kv_cache import write_kv, write_kv_reference
from lemur.kernels.rmsnorm import fused_add_rmsnorm, fused_add_rmsnorm_reference, rmsnorm, rmsnorm_reference
from lemur.kernels.rotary import rotary_embedding_neox, rotary_embedding_neox_reference
from tests.kernels.conftest import DEVICE, DTYPES, assert_close


def randn(*shape: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float32, device=DEVICE).mul(scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 300), (3, 5, 129), (2, 8192)])
def test_rmsnorm(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x, w = randn(*shape, dtype=dtype, scale=3), randn(shape[-1], dtype=dtype)
    assert_close(rmsnorm(x, w, 1e-5), rmsnorm_reference(x, w, 1e-5), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 16), (9, 257), (2, 3, 96), (3, 8192)])
@pytest.mark.parametrize("in_place", [False, True])
def test_fused_add_rmsnorm(shape: tuple[int, ...], dtype: torch.dtype, in_place: bool) -> None:
    torch.manual_seed(1)
    x, res, w = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype, scale=4), randn(shape[-1], dtype=dtype)
    x_ref, res_ref = x.clone(), res.clone()
    expected, _ = fused_add_rmsnorm_reference(x_ref, res_ref, w, 1e-6)
    out = fused_add_rmsnorm(x, res, w, 1e-6, out=x if in_place else None)
    assert_close(out, expected, dtype)
    assert_close(res, res_ref, dtype)  # the residual was updated in place
    if in_place:
        assert out.data_ptr() == x.data_ptr()
    else:
        assert_close(x, x_ref, dtype)  # x untouched


def test_rmsnorm_strided_rows() -> None:
    """Rows of a wider buffer (row stride != hidden) are read and written in place."""
    torch.manual_seed(2)
    buf, res_buf = randn(6, 200, dtype=torch.float32), randn(6, 200, dtype=torch.float32)
    x, res, w = buf[:, 10:138], res_buf[:, :128], randn(128, dtype=torch.float32)
    x_ref, res_ref = x.clone(), res.clone()
    expected, _ = fused_add_rmsnorm_reference(x_ref, res_ref, w)
    untouched = res_buf[:, 128:].clone()
    fused_add_rmsnorm(x, res, w, out=x)
    assert_close(x, expected, torch.float32)
    assert_close(res, res_ref, torch.float32)
    assert torch.equal(res_buf[:, 128:], untouched)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2), (5, 400), (3, 7, 3000), (1, 2 * 7168)])
def test_silu_and_mul(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    x = randn(*shape, dtype=dtype, scale=3)
    out = silu_and_mul(x)
    assert out.shape == (*shape[:-1], shape[-1] // 2)
    assert_close(out, silu_and_mul_reference(x), dtype)


def rope_cache(max_pos: int, rotary_dim: int, dtype: torch.dtype) -> torch.Tensor:
    inv_freq = 1.0 / 10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim)
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("tokens", "q_heads", "kv_heads", "head_dim", "rotary_dim"),
    [(1, 4, 2, 32, 32), (6, 3, 1, 24, 24), (13, 16, 2, 128, 128), (5, 8, 8, 64, 32)],
)
def test_rotary_in_place_on_qkv_views(
    tokens: int, q_heads: int, kv_heads: int, head_dim: int, rotary_dim: int, dtype: torch.dtype
) -> None:
    torch.manual_seed(4)
    qkv = randn(tokens, (q_heads + 2 * kv_heads) * head_dim, dtype=dtype)
    expected = qkv.clone()
    cache = rope_cache(4096, rotary_dim, dtype)
    positions = torch.randint(0, 4096, (tokens,), device=DEVICE)
    q_end, k_end = q_heads * head_dim, (q_heads + kv_heads) * head_dim
    rotary_embedding_neox(positions, qkv[:, :q_end], qkv[:, q_end:k_end], head_size=head_dim,
                          cos_sin_cache=cache, rotary_dim=rotary_dim)  # fmt: skip
    rotary_embedding_neox_reference(positions, expected[:, :q_end], expected[:, q_end:k_end], head_dim, cache,
                                    rotary_dim)  # fmt: skip
    assert_close(qkv, expected, dtype)
    assert torch.equal(qkv[:, k_end:], expected[:, k_end:])  # v untouched
    if rotary_dim < head_dim:  # the tail of each head passes through
        heads = qkv[:, :q_end].view(tokens, q_heads, head_dim)
        original = expected[:, :q_end].view(tokens, q_heads, head_dim)
        assert torch.equal(heads[..., rotary_dim:], original[..., rotary_dim:])


def test_rotary_query_only_and_3d() -> None:
    torch.manual_seed(5)
    q = randn(4, 6, 32, dtype=torch.float32)
    original, expected = q.clone(), q.clone()
    cache, positions = rope_cache(64, 32, torch.float32), torch.tensor([0, 5, 63, 1], dtype=torch.int32, device=DEVICE)
    rotary_embedding_neox(positions, q, None, 32, cache)
    rotary_embedding_neox_reference(positions, expected, None, 32, cache)
    assert_close(q, expected, torch.float32)
    assert torch.equal(q[0], original[0])  # position 0 is the identity rotation
    assert not torch.allclose(q[1], original[1])  # position 5 is not


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("tokens", "kv_heads", "head_dim", "block_size"), [(1, 1, 32, 16), (5, 3, 24, 8), (33, 2, 128, 16)]
)
def test_write_kv_into_strided_cache(
    tokens: int, kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> None:
    torch.manual_seed(6)
    num_blocks = 8
    kv = torch.zeros(2, num_blocks, block_size, kv_heads, head_dim, dtype=dtype, device=DEVICE)  # vLLM's layout
    kv_ref = kv.clone()
    qkv = randn(tokens, (4 + 2 * kv_heads) * head_dim, dtype=dtype)  # keys and values are column views
    key = qkv[:, 4 * head_dim : (4 + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    value = qkv[:, (4 + kv_heads) * head_dim :].view(tokens, kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, device=DEVICE)[:tokens]
    slots[tokens // 2] = -1  # a padding token
    write_kv(key, value, kv[0], kv[1], slots)
    write_kv_reference(key, value, kv_ref[0], kv_ref[1], slots)
    assert torch.equal(kv, kv_ref)
    assert int((kv != 0).any(dim=(-1, -2)).sum()) == 2 * (tokens - 1)  # every live token, twice, nothing else


def test_input_checks_raise_clear_errors() -> None:
    x = randn(4, 64, dtype=torch.float32)
    w = randn(64, dtype=torch.float32)
    with pytest.raises(KernelInputError, match="dtype"):
        rmsnorm(x.to(torch.int32), w)
    with pytest.raises(KernelInputError, match="last dimension 64, expected 32"):
        rmsnorm(x, w[:32])
    with pytest.raises(KernelInputError, match="residual has shape"):
        fused_add_rmsnorm(x, x[:2].clone(), w)
    with pytest.raises(KernelInputError, match="contiguous in its last dimension"):
        rmsnorm(x.t(), randn(4, dtype=torch.float32))
    with pytest.raises(KernelInputError, match="meta"):
        rmsnorm(torch.empty(4, 64, device="meta"), torch.empty(64, device="meta"))
    with pytest.raises(KernelInputError, match="even"):
        silu_and_mul(randn(3, 7, dtype=torch.float32))
    with pytest.raises(KernelInputError, match="rotary_dim"):
        rotary_embedding_neox(torch.zeros(4, dtype=torch.int64, device=DEVICE), x, None, 32,
                              rope_cache(8, 32, torch.float32), rotary_dim=33)  # fmt: skip
    with pytest.raises(KernelInputError, match="positions"):
        rotary_embedding_neox(torch.zeros(4, device=DEVICE), x, None, 32, rope_cache(8, 32, torch.float32))
    cache = torch.zeros(4, 16, 2, 32, device=DEVICE)
    with pytest.raises(KernelInputError, match="kv_heads, head_dim"):
        write_kv(randn(3, 4, 32, dtype=torch.float32), randn(3, 4, 32, dtype=torch.float32), cache, cache.clone(),
                 torch.arange(3, device=DEVICE))  # fmt: skip
    with pytest.raises(KernelInputError, match="slot_mapping has 2 slots for 3 tokens"):
        kv = randn(3, 2, 32, dtype=torch.float32)
        write_kv(kv, kv, cache, cache.clone(), torch.arange(2, device=DEVICE))
