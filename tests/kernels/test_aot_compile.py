"""Every kernel compiles for sm_80 and sm_90 with no GPU present (`python -m lemur.kernels.aot`),
and the check really catches GPU-only mistakes that the interpreter accepts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO


def compiler_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, not from a warm cache
    return env


@pytest.mark.slow  # compiles every kernel for two GPUs: in `make test`, not the fast loop
def test_all_kernels_compile_for_sm80_and_sm90(tmp_path: Path) -> None:
    from lemur.kernels.aot import lemur_70b_specs

    proc = subprocess.run([sys.executable, "-m", "lemur.kernels.aot", "--arch", "80", "--arch", "90"], cwd=REPO,
                          env=compiler_env(tmp_path), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("ok ", "FAIL"))]
    labels = [spec.label for spec in lemur_70b_specs()]
    assert len(labels) >= 20
    for arch in (80, 90):
        for label in labels:
            assert any(line.startswith(f"ok   sm_{arch} {label}:") for line in lines), f"sm_{arch} {label} missing"


def test_compile_check_rejects_a_dot_the_interpreter_accepts(tmp_path: Path) -> None:
    """`tl.dot` with K = 8 runs in the interpreter but cannot be lowered for a GPU."""
    script = tmp_path / "bad_kernel.py"
    script.write_text(textwrap.dedent('''
        import torch, triton, triton.language as tl
        from lemur.kernels.aot import KernelSpec, compile_spec

        @triton.jit
        def small_dot(a_ptr, b_ptr, c_ptr, K: tl.constexpr):
            r = tl.arange(0, 16)
            k = tl.arange(0, K)
            a = tl.load(a_ptr + r[:, None] * K + k[None, :])
            b = tl.load(b_ptr + k[:, None] * 16 + r[None, :])
            tl.store(c_ptr + r[:, None] * 16 + r[None, :], tl.dot(a, b))

        for K in (16, 8):
            spec = KernelSpec(f"small_dot[K={K}]", small_dot, torch.float16, {"K": K}, 4, {"c_ptr": "fp32"})
            try:
                compile_spec(spec, 90)
                print(f"K={K} compiled")
            except Exception as e:
                print(f"K={K} rejected: {type(e).__name__}")
    '''))  # fmt: skip
    env = {**compiler_env(tmp_path), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "K=16 compiled" in proc.stdout
    assert "K=8 rejected: CompilationError" in proc.stdout
