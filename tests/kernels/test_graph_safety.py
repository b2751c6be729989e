"""What CUDA-graph capture needs from the attention backend's step, checked
without a GPU: building the metadata from vLLM's and running the LEMUR
implementation (KV write, attention) neither syncs with the device (no
.item(), .tolist(), .cpu(), bool() of a tensor) nor allocates, and attention
is one kernel launch (the split-K merge is fused into the decode kernel).

The kernels are replaced by recorders: what is checked is the host code
around them, the part that would break a capture."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

pytest.importorskip("vllm.v1.attention.backend")  # a bare GPU image may carry torch and triton only
from vllm.v1.kv_cache_layout import KVCacheLayout

from lemur.kernels import kv_cache
from lemur.kernels import paged_decode as pa
from lemur.kernels import paged_prefill as pp
from lemur.kernels.attention_backend import LemurAttentionImpl
from tests.kernels.conftest import DEVICE
from tests.kernels.test_attention_backend import HEAD_DIM, KV_HEADS, Q_HEADS, layer_cache, make_builder, step_metadata

SYNCS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "nonzero"}
ALLOCATIONS = {"empty", "zeros", "ones", "full", "empty_like", "zeros_like", "ones_like", "full_like", "tensor"}


class Watch(TorchFunctionMode):
    """Records device syncs and allocations made through torch."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []
        self.allocations: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in SYNCS:
            self.syncs.append(name)
        if name in ALLOCATIONS:
            self.allocations.append(name)
        return func(*args, **(kwargs or {}))


class Recorder:
    """Stands in for a `@triton.jit` kernel: `kernel[grid](*args, **meta)` is recorded."""

    def __init__(self, name: str, launches: list) -> None:
        self.name, self.launches = name, launches

    def __getitem__(self, grid):
        return lambda *args, **meta: self.launches.append((self.name, grid, meta))


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list:
    record: list = []
    for module, name in ((pa, "_paged_decode_kernel"), (pa, "_merge_splits_kernel"), (pp, "_paged_prefill_kernel"),
                         (kv_cache, "_write_kv_kernel")):  # fmt: skip
        monkeypatch.setattr(module, name, Recorder(name, record))
    return record


@pytest.mark.parametrize(
    ("requests", "kernel"),
    [
        ([(2048, 1)] * 4, "_paged_decode_kernel"),  # decode only, long contexts: split-K with the fused merge
        ([(40, 1), (300, 60), (0, 0)], "_paged_prefill_kernel"),  # mixed, with a padded request
    ],
)
def test_a_step_neither_syncs_nor_allocates(launches: list, requests: list, kernel: str) -> None:
    """The backend as vLLM drives it in a step: build the metadata, write K/V, attend."""
    builder = make_builder()  # allocates the workspace, once, at start-up
    impl = LemurAttentionImpl(Q_HEADS, HEAD_DIM, HEAD_DIM**-0.5, KV_HEADS)
    tables = torch.arange(len(requests) * 128, dtype=torch.int32).view(len(requests), 128)
    kv_cache = layer_cache(len(requests) * 128, KVCacheLayout.LBHNC, torch.bfloat16)
    common = step_metadata(requests, tables)
    tokens = common.num_actual_tokens
    query = torch.zeros(tokens, Q_HEADS, HEAD_DIM, dtype=torch.bfloat16, device=DEVICE)
    key = torch.zeros(tokens, KV_HEADS, HEAD_DIM, dtype=torch.bfloat16, device=DEVICE)
    output = torch.empty_like(query)
    with Watch() as watch:
        metadata = builder.build(0, common)
        impl.do_kv_cache_update(None, key, key, kv_cache, metadata.slot_mapping)
        impl.forward(None, query, key, key, kv_cache, metadata, output)
    assert watch.syncs == [] and watch.allocations == []
    assert [name for name, _, _ in launches] == ["_write_kv_kernel", kernel]  # one attention launch a step
    if kernel == "_paged_decode_kernel":
        _, grid, meta = launches[1]
        assert grid[2] > 1 and meta["SPLIT"] and meta["FUSED"]  # split-K, merged in the same launch


def test_the_watch_catches_a_sync_and_an_allocation() -> None:
    """The check above can fail: what it looks for is seen."""
    t = torch.ones(3)
    with Watch() as watch:
        t.max().item()
        torch.empty(2)
    assert watch.syncs == ["item"] and watch.allocations == ["empty"]
