"""What the CPU is and what it lets a process do: model, ISA flags, AMX
permission, allowed CPUs and NUMA nodes, and thread binding for CPU ranks.

No torch, no vllm: `lemur env` and the vLLM plugin use it before either loads.

AMX: Linux hands out the AMX tile state (XTILEDATA, 8 KiB per thread) only to
processes that ask for it with `arch_prctl(ARCH_REQ_XCOMP_PERM)`; an AMX
instruction without that permission is SIGILL. The permission is per process
and is not kept across exec, so each process vLLM spawns must ask again.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# x86-64 Linux: arch_prctl syscall and its AMX permission requests (asm/prctl.h).
SYS_ARCH_PRCTL = 158
ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
XFEATURE_MASK_XTILE = (1 << 17) | (1 << 18)  # XTILECFG | XTILEDATA

AMX_FLAGS = ("amx_tile", "amx_bf16", "amx_int8")
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", *AMX_FLAGS)

# Plain strings, so callers can log and compare them without an enum import.
AMX_UNSUPPORTED = "unsupported"  # no amx_tile flag, or not x86-64 Linux
AMX_GRANTED = "granted"
AMX_DENIED = "denied"  # the kernel refused (old kernel, or a seccomp/VM policy)


def _cpuinfo_field(name: str) -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    return frozenset((_cpuinfo_field("flags") or "").split())


def has_amx(flags: frozenset[str] | None = None) -> bool:
    return "amx_tile" in (cpu_flags() if flags is None else flags)


def _arch_prctl(code: int, arg: int | ctypes.c_ulong) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if isinstance(arg, ctypes.c_ulong):
        return libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_int(code), ctypes.byref(arg))
    return libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_int(code), ctypes.c_ulong(arg))


def _amx_syscalls_apply() -> bool:
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64") and has_amx()


def amx_permitted() -> bool:
    """Whether this process may run AMX instructions now."""
    if not _amx_syscalls_apply():
        return False
    mask = ctypes.c_ulong(0)
    if _arch_prctl(ARCH_GET_XCOMP_PERM, mask) != 0:
        return False
    return (mask.value & XFEATURE_MASK_XTILE) == XFEATURE_MASK_XTILE


def request_amx_permission() -> str:
    """Ask Linux for the AMX tile state for this process. Idempotent and cheap;
    AMX_UNSUPPORTED (a no-op) on CPUs without AMX and off x86-64 Linux."""
    if not _amx_syscalls_apply():
        return AMX_UNSUPPORTED
    if _arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0:
        return AMX_DENIED
    return AMX_GRANTED if amx_permitted() else AMX_DENIED


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask), sorted."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _parse_cpu_list(text: str) -> set[int]:
    """'0-3,8,10-11' -> {0, 1, 2, 3, 8, 10, 11}."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def numa_nodes(cpus: Sequence[int], root: Path = Path("/sys/devices/system/node")) -> list[list[int]]:
    """The allowed CPUs grouped by NUMA node (nodes with none of them left
    out); one group of all of them when the kernel shows no NUMA topology."""
    nodes: list[list[int]] = []
    allowed = set(cpus)
    for node in sorted(root.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        try:
            members = _parse_cpu_list((node / "cpulist").read_text()) & allowed
        except (OSError, ValueError):
            continue
        if members:
            nodes.append(sorted(members))
    return nodes or [sorted(allowed)]


def _span(cpus: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (vLLM's VLLM_CPU_OMP_THREADS_BIND syntax)."""
    parts: list[str] = []
    start = prev = cpus[0]
    for c in [*cpus[1:], None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if c is not None:
            start = prev = c
    return ",".join(parts)


@dataclass(frozen=True)
class ThreadBinding:
    """VLLM_CPU_OMP_THREADS_BIND for `world_size` CPU ranks: one CPU list per
    rank, joined by '|'. `shared` when there are fewer CPUs than ranks."""

    value: str
    ranks: tuple[tuple[int, ...], ...]
    reserved: tuple[int, ...]
    shared: bool


def thread_binding(world_size: int, cpus: Sequence[int], nodes: int) -> ThreadBinding | None:
    """None when vLLM's own binding works: one rank, or a NUMA node per rank
    (vLLM's "auto" binds rank i to node i and refuses fewer nodes than ranks).
    Otherwise split the allowed CPUs into equal contiguous shares; what does
    not divide evenly is left to the engine core and the gateway."""
    if world_size <= 1 or nodes >= world_size:
        return None
    cpus = sorted(cpus)
    if len(cpus) < world_size:  # ranks share CPUs: slow, but it runs
        ranks = tuple((cpus[r % len(cpus)],) for r in range(world_size))
        return ThreadBinding("|".join(str(r[0]) for r in ranks), ranks, (), True)
    share = len(cpus) // world_size
    ranks = tuple(tuple(cpus[r * share : (r + 1) * share]) for r in range(world_size))
    reserved = tuple(cpus[share * world_size :])
    return ThreadBinding("|".join(_span(r) for r in ranks), ranks, reserved, False)


def explicit_binding(ranks: int, cpus: Sequence[int]) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for `ranks` ranks on this node, always spelled
    out (across nodes vLLM's "auto" counts every node's ranks and refuses):
    rank i on NUMA node i where there are enough nodes, else equal shares of
    the allowed CPUs."""
    nodes = numa_nodes(cpus)
    split = thread_binding(ranks, cpus, len(nodes))
    return split.value if split is not None else "|".join(_span(nodes[r]) for r in range(ranks))
