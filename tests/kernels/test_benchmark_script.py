"""The GPU kernel benchmark stays runnable: its smoke mode runs every case on tiny
shapes (the interpreter here, the GPU there) and checks each against its twin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow  # several seconds in subprocesses: `make test`, not the fast loop
def test_kernel_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "kernels.json"
    proc = subprocess.run([sys.executable, "benchmarks/kernels.py", "--smoke", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {r["op"] for r in rows} == {"fused_add_rmsnorm", "rmsnorm", "silu_and_mul", "rotary_neox (+copy)",
                                       "write_kv", "paged_decode", "paged_prefill", "mixed_batch"}  # fmt: skip
    for row in rows:
        assert row["ms"] > 0 and row["gbps"] > 0
        assert row["max_err"] <= 0.05  # checked against the twin before timing (bf16)
        assert (row["tflops"] is not None) == (row["op"] in ("paged_prefill", "mixed_batch"))
