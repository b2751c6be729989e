"""`lemur env`: the bug-report dump, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lemur.hardware import cpu
from tests.conftest import REPO


def lemur_env(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    cmd = [sys.executable, "-m", "lemur", "env", *args]
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow  # several seconds in subprocesses: `make test`, not the fast loop
def test_env_json_for_a_model(tiny_checkpoint: Path) -> None:
    out = lemur_env("--json", "--model", str(tiny_checkpoint), "-tp", "2", env={"VLLM_CPU_KVCACHE_SPACE": "2"})
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["packages"]["torch"].startswith("2.13") and r["packages"]["vllm"].startswith("0.32.0")
    assert r["packages"]["transformers"] and r["packages"]["lemur-serve"]
    assert r["python"].startswith(".".join(map(str, sys.version_info[:3])))
    c = r["cpu"]
    assert c["model"] == cpu.cpu_model() and c["allowed_cpus"] == len(cpu.allowed_cpus())
    assert set(c["isa"]) == set(cpu.ISA_FLAGS) and c["isa"]["amx_tile"] == cpu.has_amx()
    assert c["amx_permission"] == (cpu.AMX_GRANTED if cpu.has_amx() else cpu.AMX_UNSUPPORTED)
    assert r["gpus"] == []  # no NVIDIA driver on the CI machines
    s = r["serving"]
    # vLLM on a CPU runs this float32 checkpoint in bf16; KV per token =
    # 2 (K, V) x 2 layers x 2 KV heads x head_dim 32 x 2 bytes.
    assert (s["platform"], s["dtype"], s["checkpoint_dtype"]) == ("cpu", "bfloat16", "float32")
    assert s["kv_bytes_per_token"] == 2 * 2 * 2 * 32 * 2
    assert s["kv_cache_gib"] == 2 and s["kv_cache_source"] == "VLLM_CPU_KVCACHE_SPACE"
    assert s["kv_cache_tokens"] == 2 * 1024**3 // 512
    allowed = cpu.allowed_cpus()
    binding = cpu.thread_binding(2, allowed, len(cpu.numa_nodes(allowed)))
    assert s["threads_bind"] == (binding.value if binding else "auto")


@pytest.mark.slow  # several seconds in subprocesses: `make test`, not the fast loop
def test_env_text_with_float32_and_default_budget(tiny_checkpoint: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    cmd = [sys.executable, "-m", "lemur", "env", "--model", str(tiny_checkpoint), "--dtype", "float32"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for line in ("Lemur Serve environment", "CPU", "GPUs", f"Serving {tiny_checkpoint}"):
        assert line in text
    assert "dtype         float32 (checkpoint: float32)" in text
    assert "KV per token  1024 bytes" in text
    assert f"KV cache      1 GiB (default) = {1024**3 // 1024} tokens" in text
    assert f"AMX           {cpu.AMX_GRANTED if cpu.has_amx() else cpu.AMX_UNSUPPORTED}" in text


def test_env_without_a_model(tmp_path: Path) -> None:
    out = lemur_env(env={"LEMUR_CACHE": str(tmp_path)})  # no cached default model
    assert out.returncode == 0, out.stderr
    assert "give --model MODEL" in out.stdout and "KV per token" not in out.stdout
    assert "vllm          0.32.0" in out.stdout
