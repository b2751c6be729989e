"""The LEMUR backend's own classes (kernels/attention_backend.py) as vLLM
drives them, without an engine: the builder turns vLLM's CommonAttentionMetadata
into ours, the implementation writes K/V into vLLM's per-layer cache and attends.

The cache is what vLLM hands a layer: a logical `(blocks, kv_heads,
block_size, 2 * D)` tensor in one of the physical orders the backend declares.
Under the interpreter (no GPU) the kernels run as Triton; the workspace is the
builder's, as on a GPU. The engine-level check is tests/e2e/test_kernels_plugin.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm.v1.attention.backend")  # a bare GPU image may carry torch and triton only
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType, CommonAttentionMetadata
from vllm.v1.kv_cache_interface import FullAttentionSpec
from vllm.v1.kv_cache_layout import KVCacheLayout

from lemur.kernels import paged_decode as pa
from lemur.kernels.attention_backend import (
    LemurAttentionBackend,
    LemurAttentionImpl,
    LemurCPUAttentionBackend,
    LemurMetadataBuilder,
)
from tests.kernels.conftest import DEVICE, assert_close
from tests.kernels.test_paged_prefill import dense_causal

Q_HEADS, KV_HEADS, HEAD_DIM, PAGE = 8, 2, 64, 16
MAX_MODEL_LEN = 1024  # room for 4 splits of 4 tiles of 64


def layer_cache(blocks: int, layout: KVCacheLayout, dtype: torch.dtype) -> torch.Tensor:
    """A layer's cache as vLLM views it: logical (blocks, kv_heads, page, 2 * D),
    memory in `layout`'s order (its layer view order), NaN wherever unwritten."""
    logical = (blocks, KV_HEADS, PAGE, 2 * HEAD_DIM)
    order = layout.layer_view_order  # physical position -> logical axis
    physical = torch.full([logical[i] for i in order], float("nan"), dtype=dtype, device=DEVICE)
    return physical.permute([order.index(i) for i in range(4)])


def make_builder(max_seqs: int = 8) -> LemurMetadataBuilder:
    spec = FullAttentionSpec(block_size=PAGE, num_kv_heads=KV_HEADS, head_size=HEAD_DIM, dtype=torch.float32)
    model = SimpleNamespace(get_num_attention_heads=lambda parallel_config: Q_HEADS, max_model_len=MAX_MODEL_LEN)
    config = SimpleNamespace(
        model_config=model,
        parallel_config=None,
        scheduler_config=SimpleNamespace(max_num_seqs=max_seqs),
        compilation_config=SimpleNamespace(static_forward_context={}),  # no layers: the model's head count
    )
    return LemurMetadataBuilder(spec, ["layer.0"], config, torch.device(DEVICE))


def step_metadata(requests: list[tuple[int, int]], tables: torch.Tensor) -> CommonAttentionMetadata:
    """vLLM's view of one step: (seq_len, new tokens) per request; slots follow the block table."""
    starts = torch.tensor([0] + [q for _, q in requests], dtype=torch.int32).cumsum(0).int()
    slots = [int(tables[r, p // PAGE]) * PAGE + p % PAGE for r, (s, q) in enumerate(requests) for p in range(s - q, s)]
    return CommonAttentionMetadata(
        query_start_loc=starts.to(DEVICE),
        query_start_loc_cpu=starts,
        seq_lens=torch.tensor([s for s, _ in requests], dtype=torch.int32, device=DEVICE),
        num_reqs=len(requests),
        num_actual_tokens=int(starts[-1]),
        max_query_len=max(q for _, q in requests),
        max_seq_len=max(s for s, _ in requests),
        block_table_tensor=tables.to(DEVICE),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=DEVICE),
    )


# ~8 s each in the interpreter: the fast loop takes one; `make test` all three.
@pytest.mark.parametrize(
    ("layout", "dtype"),
    [
        (KVCacheLayout.LBHNC, torch.float32),
        pytest.param(KVCacheLayout.LBNHC, torch.float32, marks=pytest.mark.slow),
        pytest.param(KVCacheLayout.LBHNC, torch.bfloat16, marks=pytest.mark.slow),
    ],
)
def test_chunked_prefill_then_decode_match_dense_attention(layout: KVCacheLayout, dtype: torch.dtype) -> None:
    """Step 1 prefills a first chunk of two prompts; step 2 mixes the rest of
    one prompt with the other's first decode; step 3 is decode only, long
    enough for split-K in the builder's workspace. Every output row equals
    dense causal attention over its request's tokens."""
    g = torch.Generator().manual_seed(0)
    builder, impl = make_builder(), LemurAttentionImpl(Q_HEADS, HEAD_DIM, HEAD_DIM**-0.5, KV_HEADS)
    tables = torch.randperm(96, generator=g)[:80].view(2, 40).int()  # scattered pages
    kv_cache = layer_cache(96, layout, dtype)
    keys = [torch.randn(n, KV_HEADS, HEAD_DIM, generator=g).to(dtype) for n in (600, 32)]
    values = [torch.randn(n, KV_HEADS, HEAD_DIM, generator=g).to(dtype) for n in (600, 32)]
    queries = [torch.randn(n, Q_HEADS, HEAD_DIM, generator=g).to(dtype) for n in (600, 32)]
    builder.workspace.partial.fill_(float("nan"))
    for step in ([(256, 256), (30, 30)], [(599, 343), (31, 1)], [(600, 1), (32, 1)]):
        rows = [slice(s - q, s) for s, q in step]
        m = builder.build(0, step_metadata(step, tables))
        key = torch.cat([keys[r][rows[r]] for r in range(2)]).to(DEVICE)
        value = torch.cat([values[r][rows[r]] for r in range(2)]).to(DEVICE)
        query = torch.cat([queries[r][rows[r]] for r in range(2)]).to(DEVICE)
        impl.do_kv_cache_update(None, key, value, kv_cache, m.slot_mapping)
        output = torch.empty_like(query)
        impl.forward(None, query, key, value, kv_cache, m, output)
        offset = 0
        for r, (s, q) in enumerate(step):
            expected = dense_causal(queries[r][rows[r]], keys[r][:s], values[r][:s], HEAD_DIM**-0.5)
            assert_close(output[offset : offset + q], expected.to(DEVICE), dtype)
            offset += q
    # the decode step split its 600 tokens in two, in the builder's buffers, and left the counters clean
    assert not builder.workspace.partial[:2, :, :2].isnan().any() and builder.workspace.partial[:, :, 2:].isnan().all()
    assert not builder.workspace.counters.any()


def test_the_builder_allocates_the_workspace_once_and_every_step_shares_it() -> None:
    builder = make_builder(max_seqs=5)
    tables = torch.arange(8, dtype=torch.int32).view(2, 4)
    first = builder.build(0, step_metadata([(10, 10), (3, 3)], tables))
    second = builder.build(0, step_metadata([(11, 1), (4, 1)], tables))
    assert first.workspace is second.workspace is builder.workspace
    assert builder.workspace.partial.shape == (5, Q_HEADS, 4, HEAD_DIM) == (5, Q_HEADS, pa.max_splits_for(1024), 64)
    assert builder.workspace.counters.shape == (5 * KV_HEADS,) and not builder.workspace.counters.any()
    # metadata references vLLM's tensors: building copies nothing
    assert second.block_table.data_ptr() == tables.data_ptr() or DEVICE != "cpu"
    assert (second.max_query_len, second.max_seq_len, second.num_actual_tokens) == (1, 11, 2)


def test_the_backend_declares_what_it_runs() -> None:
    assert LemurAttentionBackend.get_name() == "CUSTOM" and LemurCPUAttentionBackend.get_name() == "CPU_ATTN"
    for backend in (LemurAttentionBackend, LemurCPUAttentionBackend):  # one implementation for both
        assert backend.get_impl_cls() is LemurAttentionImpl and backend.get_builder_cls() is LemurMetadataBuilder
        assert backend.forward_includes_kv_cache_update is False
    assert LemurAttentionBackend.supports_attn_type(AttentionType.DECODER)
    assert not LemurAttentionBackend.supports_attn_type(AttentionType.ENCODER_ONLY)
    assert LemurAttentionBackend.supports_head_size(128) and not LemurAttentionBackend.supports_head_size(100)
    assert all(LemurAttentionBackend.supports_dtype(d) for d in (torch.float16, torch.bfloat16, torch.float32))
    assert not LemurAttentionBackend.supports_kv_cache_dtype("fp8")
    assert LemurMetadataBuilder._cudagraph_support == AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE
    assert LemurAttentionBackend.supported_kv_cache_layouts()[0] == KVCacheLayout.LBHNC


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"sliding_window": 128}, "sliding window"),
        ({"alibi_slopes": [0.5] * Q_HEADS}, "alibi slopes"),
        ({"logits_soft_cap": 30.0}, "logits soft cap"),
        ({"attn_type": AttentionType.ENCODER_ONLY}, "non-decoder attention"),
        ({"kv_cache_dtype": "fp8"}, "KV cache dtype fp8"),
        ({"kv_sharing_target_layer_name": "layer.0"}, "KV sharing"),
    ],
)
def test_what_it_cannot_run_is_refused_by_name(kwargs: dict, named: str) -> None:
    with pytest.raises(NotImplementedError, match=named):
        LemurAttentionImpl(Q_HEADS, HEAD_DIM, 0.125, KV_HEADS, **kwargs)


def test_non_causal_metadata_is_refused() -> None:
    m = step_metadata([(4, 4)], torch.zeros(1, 1, dtype=torch.int32))
    m.causal = False
    with pytest.raises(NotImplementedError, match="causal decoder attention only"):
        make_builder().build(0, m)


@pytest.mark.parametrize(
    ("cpu", "enum", "cls"), [(False, "CUSTOM", LemurAttentionBackend), (True, "CPU_ATTN", LemurCPUAttentionBackend)]
)
def test_the_plugin_registers_lemur_where_vllm_looks(monkeypatch: pytest.MonkeyPatch, cpu: bool, enum: str, cls):
    """On CUDA, `--attention-backend CUSTOM` resolves to LEMUR; on CPU, CPU_ATTN does."""
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends import registry

    from lemur.kernels.vllm_plugin import register_attention_backend

    monkeypatch.setattr(registry, "_ATTN_OVERRIDES", {})  # the process's registry is left as it was
    monkeypatch.setattr(current_platform, "is_cpu", lambda: cpu)
    register_attention_backend()
    assert registry.AttentionBackendEnum[enum].get_class() is cls
    other = "CPU_ATTN" if enum == "CUSTOM" else "CUSTOM"
    assert not registry.AttentionBackendEnum[other].is_overridden()


def test_vllm_accepts_lemur_70b_per_gpu_shapes_on_ampere_and_hopper_only() -> None:
    from vllm.platforms.interface import DeviceCapability

    def reasons(dtype: torch.dtype, capability: tuple[int, int], **extra) -> list[str]:
        args = dict(head_size=128, dtype=dtype, kv_cache_dtype="auto", block_size=16, use_mla=False, has_sink=False)
        args |= dict(use_sparse=False, use_mm_prefix=False, use_per_head_quant_scales=False)
        args |= dict(device_capability=DeviceCapability(*capability), attn_type=AttentionType.DECODER) | extra
        return LemurAttentionBackend.validate_configuration(**args)

    assert reasons(torch.bfloat16, (9, 0)) == [] and reasons(torch.float16, (8, 0)) == []
    assert reasons(torch.float16, (7, 5)) == ["compute capability not supported"]
    assert reasons(torch.bfloat16, (9, 0), has_sliding_window=True) == ["sliding window not supported"]
    assert reasons(torch.bfloat16, (9, 0), kv_cache_dtype="fp8") == ["kv_cache_dtype not supported"]


def test_profiling_and_dummy_runs_get_zeros_not_garbage() -> None:
    impl = LemurAttentionImpl(Q_HEADS, HEAD_DIM, HEAD_DIM**-0.5, KV_HEADS)
    output = torch.full((3, Q_HEADS, HEAD_DIM), float("nan"), device=DEVICE)
    query = torch.zeros_like(output)
    assert impl.forward(None, query, None, None, None, None, output) is output
    assert not output.any()
