"""Greedy tokens and logprobs in float32, the yardstick of the parallel and
multi-node tests: a sharded model must give TP 1's tokens, logprobs within
LOGPROB_TOL.

Float32, not the CPU default bf16: tensor parallel sums partial products in
another order (an all-reduce over ranks), and in bf16 that alone moves
logprobs by ~1e-2 and flips near-tied greedy tokens. In float32 the
reordering costs ~1e-6, so the check is of the sharding, not of rounding."""

from __future__ import annotations

import httpx

from lemur.server.live import LiveServer

PROMPTS = [
    "def fibonacci(n):",
    "The capital of France is",
    "import numpy as np\n",
    "<html><body>",
    "Once upon a time",
]
MAX_TOKENS = 24
LOGPROB_TOL = 1e-4  # float32 with reordered sums: ~1e-6 observed

Greedy = list[list[tuple[str, float, dict[str, float]]]]


def greedy(server: LiveServer) -> Greedy:
    """(token, logprob, top-2) per generated token, for each prompt."""
    out = []
    for prompt in PROMPTS:
        body = {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "logprobs": 2, "ignore_eos": True}
        r = httpx.post(server.url("/v1/completions"), json=body, headers=server.headers(), timeout=60)
        assert r.status_code == 200, r.text
        lp = r.json()["choices"][0]["logprobs"]
        out.append(list(zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True)))
    return out


def largest_difference(reference: Greedy, got: Greedy, label: str) -> float:
    """Assert `got` follows the reference (the same tokens, logprobs within
    LOGPROB_TOL, another token only at an exact tie); its largest logprob
    difference."""
    worst = 0.0
    for prompt, ref, seq in zip(PROMPTS, reference, got, strict=True):
        for i, ((ref_tok, ref_lp, ref_top), (tok, lp, _)) in enumerate(zip(ref, seq, strict=True)):
            assert abs(lp - ref_lp) <= LOGPROB_TOL, (label, prompt, i, lp, ref_lp)
            worst = max(worst, abs(lp - ref_lp))
            if tok != ref_tok:
                # Only an exact tie (within the tolerance) may pick another token;
                # after it, the two continuations are different texts.
                gap = abs(sorted(ref_top.values())[-1] - sorted(ref_top.values())[-2])
                assert gap <= LOGPROB_TOL, (label, prompt, i, tok, ref_tok, gap)
                break
    return worst
