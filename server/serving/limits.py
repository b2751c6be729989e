"""Bounded work per request: what one HTTP body may ask of the engine.

Checked on the parsed body before anything is tokenized, so a 1 KB request
for n=128 x 256 prompts x the whole context is a 400 in microseconds, not
millions of tokens of engine work. Each refusal names the limit, its flag
and the value asked for.
"""

from __future__ import annotations

from collections.abc import Sequence

from lemur.server.config import GatewayConfig
from lemur.server.engine import EngineRequest
from lemur.server.errors import InvalidRequest


class LimitExceeded(InvalidRequest):
    code = "limit_exceeded"


def check_sequences(config: GatewayConfig, n: int, prompts: int) -> None:
    """400 when a request asks for more sequences (n x prompts) than allowed."""
    sequences = n * prompts
    if sequences > config.max_sequences_per_request:
        detail = f"n={n}" if prompts == 1 else f"n={n} x {prompts} prompts"
        raise LimitExceeded(
            f"this request asks for {sequences} sequences ({detail}); the server allows at most "
            f"{config.max_sequences_per_request} per request (--max-sequences-per-request)",
            param="n",
        )


def check_max_tokens(config: GatewayConfig, requested: int | None, param: str = "max_tokens") -> None:
    if requested is not None and requested > config.max_tokens_limit:
        raise LimitExceeded(
            f"{param}={requested} is more than this server allows per sequence: "
            f"{config.max_tokens_limit} (--max-tokens-limit)",
            param=param,
        )


def check_echo_logprobs(config: GatewayConfig, prompt_tokens: int, n: int) -> None:
    """echo + logprobs returns every prompt token's logprobs in every choice."""
    positions = prompt_tokens * n
    if positions > config.max_echo_logprob_tokens:
        raise LimitExceeded(
            f"echo with logprobs would return {positions} prompt-token logprobs ({prompt_tokens} prompt "
            f"tokens x n={n}); the server allows at most {config.max_echo_logprob_tokens} "
            "(--max-echo-logprob-tokens)",
            param="echo",
        )


def check_detokenize(tokens: list[int], max_model_len: int) -> None:
    """No sequence is longer than the context: more ids than that is no text
    this model made, only work for the event loop."""
    if len(tokens) > max_model_len:
        raise LimitExceeded(
            f"/detokenize takes at most {max_model_len} tokens (the context length); got {len(tokens)}",
            param="tokens",
        )


def check_logprob_entries(config: GatewayConfig, requests: Sequence[EngineRequest], param: str) -> None:
    """Each sampled token returns itself and its top alternatives, in every
    choice: n x max_tokens x (top_logprobs + 1) entries per prompt to build
    and send, all of it Python work on the gateway."""
    entries = sum(
        r.sampling.n * r.sampling.max_tokens * (r.sampling.logprobs + 1)
        for r in requests
        if r.sampling.logprobs is not None
    )
    if entries > config.max_logprob_entries:
        s = requests[0].sampling
        raise LimitExceeded(
            f"this request could return {entries} logprob entries (n={s.n} x max_tokens={s.max_tokens} x "
            f"{(s.logprobs or 0) + 1} per token x {len(requests)} prompt(s)); the server allows at most "
            f"{config.max_logprob_entries} (--max-logprob-entries): lower max_tokens, n or {param}",
            param=param,
        )
