"""Paged decode attention (single pass and split-K) against the torch twin."""

from __future__ import annotations

import pytest
import torch

from lemur.kernels import paged_decode as pa
from lemur.kernels.common import INTERPRET, KernelInputError
from tests.kernels.conftest import DEVICE, DTYPES, assert_close

# Relative error of the whole output (norm of the difference over norm of the
# reference): long contexts average values towards 0, where an elementwise
# atol alone would let a dropped token or a wrong scale pass.
REL_ERR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def make_case(
    seq_lens: list[int], q_heads: int, kv_heads: int, head_dim: int, page: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Caches with more blocks than needed, each sequence's pages scattered at
    random. Everything a kernel must not read is NaN: unused blocks, spare table
    columns, and the slots past each sequence's end in its last page."""
    g = torch.Generator().manual_seed(seed)
    max_blocks = max(-(-n // page) for n in seq_lens) + 1  # a spare column: tables are wider than needed
    num_blocks = len(seq_lens) * max_blocks + 3
    kc = torch.randn(num_blocks, page, kv_heads, head_dim, generator=g).to(dtype)
    vc = torch.randn(num_blocks, page, kv_heads, head_dim, generator=g).to(dtype)
    q = torch.randn(len(seq_lens), q_heads, head_dim, generator=g).to(dtype)
    tables = torch.randperm(num_blocks, generator=g)[: len(seq_lens) * max_blocks].view(len(seq_lens), max_blocks)
    live = torch.zeros(num_blocks, page, dtype=torch.bool)
    for row, n in zip(tables, seq_lens, strict=True):
        live.view(-1)[(row[: -(-n // page)].long()[:, None] * page + torch.arange(page)).flatten()[:n]] = True
    kc[~live], vc[~live] = float("nan"), float("nan")
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    return q.to(DEVICE), kc.to(DEVICE), vc.to(DEVICE), tables.int().to(DEVICE), lens.to(DEVICE)


def assert_attention_close(out: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert_close(out, expected, dtype)
    rel = (out.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-30)
    assert rel <= REL_ERR[dtype], f"relative error {rel:.2e} > {REL_ERR[dtype]:.0e}"


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
    assert_attention_close(out, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_k_long_context_few_sequences(dtype: torch.dtype) -> None:
    """The flash-decoding case with the production tile (64): 2 sequences, one an
    exact multiple of the tile and the page; splits chosen automatically, then
    forced to more than the shorter sequence can fill (empty splits to merge)."""
    q, kc, vc, tables, lens = make_case([1536, 700], 16, 2, 128, 16, dtype, seed=1)
    assert pa.choose_num_splits(2, 2, 1536, q.device) > 1
    expected = pa.paged_decode_attention_reference(q, kc, vc, tables, lens)
    assert_attention_close(pa.paged_decode_attention(q, kc, vc, tables, lens, max_seq_len=1536), expected, dtype)
    forced = pa.paged_decode_attention(q, kc, vc, tables, lens, num_splits=40, tile_n=16)
    assert_attention_close(forced, expected, dtype)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_understated_max_seq_len_loses_no_tokens(num_splits: int) -> None:
    """A caller's max_seq_len that is too small must not drop the tail of a sequence."""
    q, kc, vc, tables, lens = make_case([300, 40], 8, 2, 64, 16, torch.float32, seed=3)
    expected = pa.paged_decode_attention_reference(q, kc, vc, tables, lens)
    out = pa.paged_decode_attention(q, kc, vc, tables, lens, max_seq_len=100, num_splits=num_splits, tile_n=16)
    assert_attention_close(out, expected, torch.float32)


# The merge computes exp2(-inf - -inf) for a sequence whose splits are all empty, then masks it out.
@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")
def test_empty_sequence_gives_zeros() -> None:
    q, kc, vc, tables, lens = make_case([0, 33], 4, 2, 32, 16, torch.float32, seed=4)
    expected = pa.paged_decode_attention_reference(q, kc, vc, tables, lens)
    for splits in (1, 2):
        out = pa.paged_decode_attention(q, kc, vc, tables, lens, num_splits=splits, tile_n=16)
        assert torch.equal(out[0], torch.zeros_like(out[0]))
        assert_attention_close(out, expected, torch.float32)


def test_a_workspace_with_fewer_splits_caps_the_split_count() -> None:
    """A builder sizes its workspace for max_model_len; asked for more splits, the
    launcher uses what fits, and the last split still runs to each sequence's end."""
    q, kc, vc, tables, lens = make_case([700, 300], 8, 2, 64, 16, torch.float32, seed=5)
    workspace = pa.DecodeWorkspace.allocate(2, 8, 2, 64, q.device, max_splits=3)
    out = pa.paged_decode_attention(q, kc, vc, tables, lens, num_splits=12, tile_n=16, workspace=workspace)
    assert_attention_close(out, pa.paged_decode_attention_reference(q, kc, vc, tables, lens), torch.float32)
    assert pa.max_splits_for(4096) == 16 and pa.max_splits_for(100) == 1 and pa.max_splits_for(10**6) == pa.MAX_SPLITS
    assert pa.choose_num_splits(1, 1, 4096, q.device, sms=132) <= pa.max_splits_for(4096)


def test_scale_and_out_buffer() -> None:
    q, kc, vc, tables, lens = make_case([40, 9], 4, 2, 32, 16, torch.float32, seed=2)
    out = torch.empty_like(q)
    result = pa.paged_decode_attention(q, kc, vc, tables, lens, scale=0.3, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert_attention_close(out, pa.paged_decode_attention_reference(q, kc, vc, tables, lens, scale=0.3), torch.float32)


def test_choose_num_splits_on_an_h100() -> None:
    """132 SMs, 3 programs each: lemur-70b's per-GPU shapes."""
    cpu = torch.device("cpu")

    def splits(seqs: int, kv_heads: int, ctx: int) -> int:
        return pa.choose_num_splits(seqs, kv_heads, ctx, cpu, sms=132)

    assert splits(1024, 2, 4096) == 1  # 2048 programs: over four full waves already
    assert splits(1, 1, 64) == 1  # one tile: nothing to split
    assert splits(1, 1, 4096) == 16  # one sequence: as many splits as 4-tile chunks allow
    assert splits(32, 2, 2048) == 6  # 64 programs x 6 = 384: one near-full wave of 396
    for seqs, kv_heads, ctx in [(32, 1, 4096), (256, 2, 2048), (8, 2, 1000), (3, 1, 4096)]:
        n = splits(seqs, kv_heads, ctx)
        tiles = -(-ctx // 64)
        per_split = -(-tiles // n)
        assert (n - 1) * per_split < tiles  # no split is left without tiles
        assert per_split >= 4 or n == 1


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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("splits", [2, 5, 40])
def test_fused_merge_equals_the_two_kernel_version(dtype: torch.dtype, splits: int) -> None:
    """The last split of each group merges inside the decode kernel; the
    separate merge launch is its twin. 40 splits of short sequences leave some
    empty. Preallocated counters are left at zero, ready for the next launch."""
    q, kc, vc, tables, lens = make_case([700, 33, 1, 260], 8, 2, 64, 16, dtype, seed=11)
    workspace = pa.DecodeWorkspace.allocate(6, 8, 2, 64, q.device)  # room for more than this batch
    fused = pa.paged_decode_attention(q, kc, vc, tables, lens, num_splits=splits, tile_n=16, workspace=workspace)
    assert torch.equal(workspace.counters, torch.zeros_like(workspace.counters))
    again = pa.paged_decode_attention(q, kc, vc, tables, lens, num_splits=splits, tile_n=16, workspace=workspace)
    two = pa.paged_decode_attention(q, kc, vc, tables, lens, num_splits=splits, tile_n=16, fused_merge=False)
    assert torch.equal(fused, again)
    assert_close(fused, two, dtype, tol_scale=0.1)
    assert_attention_close(fused, pa.paged_decode_attention_reference(q, kc, vc, tables, lens), dtype)
