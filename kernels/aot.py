"""Ahead-of-time compile of every kernel for real GPUs, without a GPU.

The interpreter that runs the kernel tests on CPU accepts code that the GPU
compiler rejects (a `tl.dot` with a dimension under 16, a layout the backend
cannot lower, too much shared memory). This compiles each kernel to a cubin for
sm_80 (A100) and sm_90 (H100/H200) at lemur-70b-chat's shapes per GPU for
tensor parallel 4 and 8, with the exact meta-parameters the launchers choose.

    python -m lemur.kernels.aot --arch 80 --arch 90
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lemur.kernels.common import INTERPRET

TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
FLOAT_ARGS = {"eps", "qk_scale"}  # scalar arguments passed as Python floats
# Integer arguments that are multiples of 16 at lemur-70b's shapes (head counts per GPU are not).
ALIGNED_INTS = {"n_cols", "d", "half", "head_dim", "block_size", "tokens_per_split", "max_tokens"}
LEMUR_70B = {"hidden": 8192, "intermediate": 28672, "heads": 64, "kv_heads": 8, "head_dim": 128}


@dataclass(frozen=True)
class KernelSpec:
    """One specialisation of one kernel: what `triton.compile` needs."""

    label: str
    fn: Any  # triton.JITFunction
    dtype: torch.dtype
    constexprs: dict[str, Any]
    num_warps: int = 4
    pointer_types: dict[str, str] = field(default_factory=dict)  # pointer arg -> element type, default: dtype
    int64_args: frozenset[str] = frozenset()
    num_stages: int = 3

    def divisibility(self) -> dict[tuple[int, ...], list[list[Any]]]:
        """The hints Triton derives at run time for arguments divisible by 16:
        every pointer (torch allocations and lemur-70b's column views are
        16-byte aligned) and the strides and sizes that are multiples of 16 at
        lemur-70b's shapes. Without them the compiled code is not the one that
        runs (no vectorised or asynchronous copies, other register use)."""
        hinted = []
        for i, name in enumerate(self.fn.arg_names):
            if name in self.constexprs:
                continue
            if name.endswith("_ptr") or name in ALIGNED_INTS or ("stride" in name and not name.startswith("lse_")):
                hinted.append(i)
        return {(i,): [["tt.divisibility", 16]] for i in hinted}

    def signature(self) -> dict[str, str]:
        sig = {}
        for name in self.fn.arg_names:
            if name in self.constexprs:
                sig[name] = "constexpr"
            elif name.endswith("_ptr"):
                sig[name] = "*" + self.pointer_types.get(name, TRITON_TYPES[self.dtype])
            elif name in FLOAT_ARGS:
                sig[name] = "fp32"
            else:
                sig[name] = "i64" if name in self.int64_args else "i32"
        return sig


def lemur_70b_specs() -> Iterator[KernelSpec]:
    from lemur.kernels import activation, kv_cache, paged_decode, rmsnorm, rotary

    m = LEMUR_70B
    for dtype in (torch.float16, torch.bfloat16):
        name = TRITON_TYPES[dtype]
        cfg = rmsnorm.rmsnorm_config(m["hidden"])
        warps = cfg.pop("num_warps")
        for has_res in (False, True):
            yield KernelSpec(f"rmsnorm[{name},residual={has_res}]", rmsnorm._rmsnorm_kernel, dtype,
                             {**cfg, "HAS_RESIDUAL": has_res}, warps)  # fmt: skip
        for tp in (4, 8):
            cfg = activation.silu_and_mul_config(m["intermediate"] // tp)
            warps = cfg.pop("num_warps")
            yield KernelSpec(f"silu_and_mul[{name},tp={tp}]", activation._silu_and_mul_kernel, dtype, cfg, warps)
            q_heads, kv_heads = m["heads"] // tp, m["kv_heads"] // tp
            cfg = rotary.rotary_config(q_heads, kv_heads, m["head_dim"])
            warps = cfg.pop("num_warps")
            yield KernelSpec(f"rotary_neox[{name},tp={tp}]", rotary._rotary_neox_kernel, dtype,
                             {**cfg, "HAS_KEY": True}, warps, {"pos_ptr": "i64"})  # fmt: skip
            cfg = kv_cache.write_kv_config(kv_heads, m["head_dim"])
            warps = cfg.pop("num_warps")
            yield KernelSpec(f"write_kv[{name},tp={tp}]", kv_cache._write_kv_kernel, dtype, cfg, warps,
                             {"slot_ptr": "i64"})  # fmt: skip
            cfg = paged_decode.decode_config(q_heads // kv_heads, m["head_dim"], dtype)
            warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
            for split, fused in ((False, False), (True, False), (True, True)):
                ptrs = {"block_tables_ptr": "i32", "seq_lens_ptr": "i32", "lse_ptr": "fp32", "counter_ptr": "i32"}
                if split:
                    ptrs["out_ptr"] = "fp32"
                label = f"paged_decode[{name},tp={tp},split={split}" + (",fused]" if fused else "]")
                yield KernelSpec(label, paged_decode._paged_decode_kernel, dtype,
                                 {**cfg, "PAGE": 16, "SPLIT": split, "FUSED": fused}, warps, ptrs,
                                 num_stages=stages)  # fmt: skip
        for block_s in (2, 16, paged_decode.MAX_SPLITS):
            yield KernelSpec(f"merge_splits[{name},splits<={block_s}]", paged_decode._merge_splits_kernel, dtype,
                             {"BLOCK_S": block_s, "BLOCK_D": m["head_dim"]}, 4,
                             {"partial_ptr": "fp32", "lse_ptr": "fp32"})  # fmt: skip
        # Prefill and chunked prefill (the LEMUR backend): head counts are launch-grid sizes, not
        # specialisations, so one kernel per dtype serves TP 4 and 8.
        yield prefill_spec(dtype)
    # fp32 serving is rare, but the fp32 path uses IEEE products (not TF32): it must compile too.
    yield prefill_spec(torch.float32)
    cfg = paged_decode.decode_config(8, m["head_dim"], torch.float32)
    warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    yield KernelSpec("paged_decode[fp32,tp=8,split=False]", paged_decode._paged_decode_kernel, torch.float32,
                     {**cfg, "PAGE": 16, "SPLIT": False, "FUSED": False}, warps,
                     {"block_tables_ptr": "i32", "seq_lens_ptr": "i32", "lse_ptr": "fp32", "counter_ptr": "i32"},
                     num_stages=stages)  # fmt: skip


def prefill_spec(dtype: torch.dtype) -> KernelSpec:
    from lemur.kernels import paged_prefill

    cfg = paged_prefill.prefill_config(LEMUR_70B["head_dim"], dtype)
    warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    ptrs = {"block_tables_ptr": "i32", "query_start_loc_ptr": "i32", "seq_lens_ptr": "i32"}
    return KernelSpec(f"paged_prefill[{TRITON_TYPES[dtype]}]", paged_prefill._paged_prefill_kernel, dtype,
                      {**cfg, "PAGE": 16}, warps, ptrs, num_stages=stages)  # fmt: skip


def compile_spec(spec: KernelSpec, arch: int) -> Any:
    """Compiles to a cubin for `sm_{arch}`; raises triton's CompilationError on GPU-only mistakes."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(spec.fn, spec.signature(), constexprs=spec.constexprs, attrs=spec.divisibility())
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers, spill stack and local memory per thread, from the cuobjdump that ships with Triton."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
    usage = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {key.lower(): int(value) for key, value in usage.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lemur.kernels.aot", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", help="compute capability x10 (default: 80 and 90)")
    args = parser.parse_args(argv)
    if INTERPRET:
        print("unset TRITON_INTERPRET: the interpreter cannot compile kernels", file=sys.stderr)
        return 2
    failures = 0
    for arch in args.arch or [80, 90]:
        for spec in lemur_70b_specs():
            t0 = time.perf_counter()
            try:
                kernel = compile_spec(spec, arch)
            except Exception as e:  # report every failing kernel, not just the first
                failures += 1
                print(f"FAIL sm_{arch} {spec.label}: {type(e).__name__}: {e}")
                continue
            usage = resource_usage(kernel.asm["cubin"])
            spilled = usage.get("stack", 0) + usage.get("local", 0)
            status = "ok  " if spilled == 0 else "SPILL"
            failures += spilled > 0  # spills to local memory: a tile too big for the registers
            print(f"{status} sm_{arch} {spec.label}: {usage.get('reg')} registers, {spilled} B spilled, "
                  f"{kernel.metadata.shared} B shared memory, {spec.num_warps} warps x {spec.num_stages} stages, "
                  f"{time.perf_counter() - t0:.2f} s")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
