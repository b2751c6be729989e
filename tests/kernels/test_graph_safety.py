"""What CUDA-graph capture needs from the attention backend's forward path,
checked without a GPU: given the host-side maxima from vLLM's metadata and a
preallocated workspace, a step neither syncs with the device (no .item(),
.tolist(), .cpu(), bool() of a tensor) nor allocates, and it is one kernel
launch (the split-K merge is fused into the decode kernel).

The kernels are replaced by recorders: what is checked is the host code
around them, the part that would break a capture."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from kernels import kv_cache
from kernels import paged_attention as pa
from kernels import paged_prefill as pp
from tests.kernels.test_paged_prefill import make_batch

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
    (q, kc, vc, tables, starts, lens), _, _ = make_batch(requests, 8, 1, 128, 16, torch.bfloat16)
    out = torch.empty_like(q)
    workspace = pa.DecodeWorkspace.allocate(8, 8, 1, 128, q.device)  # once, at start-up
    key, value = torch.zeros(q.shape[0], 1, 128, dtype=q.dtype), torch.zeros(q.shape[0], 1, 128, dtype=q.dtype)
    slots = torch.arange(q.shape[0])
    maxima = {"max_query_len": max(x for _, x in requests), "max_seq_len": max(x for x, _ in requests)}
    with Watch() as watch:
        kv_cache.write_kv(key, value, kc, vc, slots)
        pp.paged_attention(q, kc, vc, tables, starts, lens, 128**-0.5, out, workspace=workspace, **maxima)
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
