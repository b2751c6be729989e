"""Paged decode attention (single pass and split-K) against the torch twin."""

from __future__ import annotations

import pytest
import torch

from kernels import paged_attention as pa
from kernels.common import INTERPRET, KernelInputError
from tests.kernels.conftest import DEVICE, DTYPES, assert_close


def make_case(
    seq_lens: list[int], q_heads: int, kv_heads: int, head_dim: int, page: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Caches with more blocks than needed, each sequence's pages scattered at random."""
    g = torch.Generator().manual_seed(seed)
    max_blocks = max(-(-n // page) for n in seq_lens) + 1  # a spare column: tables are wider than needed
    num_blocks = len(seq_lens) * max_blocks + 3
    kc = torch.randn(num_blocks, page, kv_heads, head_dim, generator=g).to(dtype).to(DEVICE)
    vc = torch.randn(num_blocks, page, kv_heads, head_dim, generator=g).to(dtype).to(DEVICE)
    q = torch.randn(len(seq_lens), q_heads, head_dim, generator=g).to(dtype).to(DEVICE)
    tables = torch.randperm(num_blocks, generator=g)[: len(seq_lens) * max_blocks].view(len(seq_lens), max_blocks)
    return q, kc, vc, tables.int().to(DEVICE), torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)


CASES = [
    # seq_lens, q_heads, kv_heads, head_dim, page
    ([1], 8, 1, 64, 16),  # one token, lemur-70b at TP 8 per GPU: 8 query heads on 1 KV head
    ([1, 57, 96], 6, 2, 40, 8),  # odd head_dim (padded to 64), group 3, small pages
    ([300, 17, 129, 64], 16, 2, 128, 16),  # lemur-70b at TP 4 per GPU: 16 query heads, 2 KV heads
    ([33, 200], 4, 4, 32, 32),  # plain multi-head attention (group 1)
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"lens{len(c[0])}-h{c[1]}/{c[2]}-d{c[3]}-p{c[4]}")
@pytest.mark.parametrize("num_splits", [1, 3])
def test_paged_decode_matches_reference(case: tuple, num_splits: int, dtype: torch.dtype) -> None:
    q, kc, vc, tables, lens = make_case(*case, dtype=dtype)
    expected = pa.paged_decode_attention_reference(q, kc, vc, tables, lens)
    out = pa.paged_decode_attention(q, kc, vc, tables, lens, num_splits=num_splits, tile_n=16)
    assert out.shape == q.shape and out.dtype == dtype
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_k_long_context_few_sequences(dtype: torch.dtype) -> None:
    """The flash-decoding case: 2 sequences of ~1.5k tokens, splits chosen automatically
    (more splits than the longest sequence needs leaves empty splits to merge)."""
    q, kc, vc, tables, lens = make_case([1500, 700], 16, 2, 128, 16, dtype, seed=1)
    splits = pa.choose_num_splits(2, 2, 1500, q.device)
    assert splits > 1
    expected = pa.paged_decode_attention_reference(q, kc, vc, tables, lens)
    assert_close(pa.paged_decode_attention(q, kc, vc, tables, lens, max_seq_len=1500), expected, dtype)
    assert_close(pa.paged_decode_attention(q, kc, vc, tables, lens, num_splits=40, tile_n=16), expected, dtype)


def test_scale_and_out_buffer() -> None:
    q, kc, vc, tables, lens = make_case([40, 9], 4, 2, 32, 16, torch.float32, seed=2)
    out = torch.empty_like(q)
    result = pa.paged_decode_attention(q, kc, vc, tables, lens, scale=0.3, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert_close(out, pa.paged_decode_attention_reference(q, kc, vc, tables, lens, scale=0.3), torch.float32)


def test_choose_num_splits() -> None:
    device = torch.device("cpu")
    assert pa.choose_num_splits(256, 2, 4096, device) == 1  # enough programs already
    assert pa.choose_num_splits(1, 1, 4096, device) > 1  # one long sequence: split it
    assert pa.choose_num_splits(1, 1, 64, device) == 1  # too short to be worth splitting


def test_input_checks() -> None:
    q, kc, vc, tables, lens = make_case([20], 6, 4, 32, 16, torch.float32)
    with pytest.raises(KernelInputError, match="not a multiple"):
        pa.paged_decode_attention(q, kc, vc, tables, lens)
    q, kc, vc, tables, lens = make_case([20], 4, 2, 32, 16, torch.float32)
    with pytest.raises(KernelInputError, match="dtypes must match"):
        pa.paged_decode_attention(q.half(), kc, vc, tables, lens)
    with pytest.raises(KernelInputError, match="exceeds the block table"):
        pa.paged_decode_attention(q, kc, vc, tables, lens, max_seq_len=1000)
    with pytest.raises(KernelInputError, match="block_tables has dtype"):
        pa.paged_decode_attention(q, kc, vc, tables.float(), lens)
    with pytest.raises(KernelInputError, match="tile_n"):
        pa.paged_decode_attention(q, kc, vc, tables, lens, tile_n=8)


@pytest.mark.skipif(not INTERPRET, reason="documents a fault of Triton's CPU interpreter only")
@pytest.mark.xfail(strict=True, reason="triton#11584: the interpreter's bf16 tl.dot is wrong; the CPU path upcasts")
def test_interpreter_bf16_dot_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the fp32 upcast the interpreter gets bf16 attention wrong. If Triton
    fixes it, this fails (strict) and the workaround in decode_config can go."""
    config = pa.decode_config
    monkeypatch.setattr(
        pa, "decode_config", lambda *a, **k: {**config(*a, **k), "FP32_DOT": False, "DOT_PRECISION": "tf32"}
    )
    q, kc, vc, tables, lens = make_case([57, 96], 6, 2, 32, 16, torch.bfloat16)
    expected = pa.paged_decode_attention_reference(q, kc, vc, tables, lens)
    assert_close(pa.paged_decode_attention(q, kc, vc, tables, lens, num_splits=1, tile_n=16), expected, torch.bfloat16)
