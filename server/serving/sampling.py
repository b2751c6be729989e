"""OpenAI sampling fields -> the engine's `SamplingSpec`, with context checks."""

from __future__ import annotations

from collections.abc import Iterable

from lemur.server.engine import SamplingSpec, StructuredSpec
from lemur.server.errors import ContextLengthExceeded, InvalidRequest
from lemur.server.protocol.common import SamplingFields
from lemur.server.serving.context import ServingContext


def resolve_max_tokens(
    requested: int | None, prompt_len: int, max_model_len: int, prompt_param: str = "messages", cap: int | None = None
) -> int:
    """Default to the room left in the context (at most `cap`); refuse what cannot fit."""
    room = max_model_len - prompt_len
    if room <= 0 or (requested is not None and requested > room):
        asked = prompt_len + (requested or 0)
        raise ContextLengthExceeded(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {asked} tokens ({prompt_len} in the prompt, {requested or 0} for the "
            "completion). Please reduce the prompt or max_tokens.",
            param="max_tokens" if room > 0 else prompt_param,
        )
    if requested is not None:
        return requested
    return room if cap is None else min(room, cap)


def check_token_ids(token_ids: Iterable[int], vocab_size: int, param: str) -> None:
    """400 for the first id outside the vocabulary."""
    bad = next((t for t in token_ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequest(f"{param}: token id {bad} is outside the vocabulary (0..{vocab_size - 1})", param=param)


def parse_logit_bias(bias: dict[str, float] | None, vocab_size: int) -> tuple[tuple[int, float], ...]:
    out = tuple((int(key), float(value)) for key, value in (bias or {}).items())
    check_token_ids((token_id for token_id, _ in out), vocab_size, "logit_bias")
    return out


def build_sampling(
    ctx: ServingContext,
    req: SamplingFields,
    *,
    prompt_len: int,
    max_tokens: int | None,
    logprobs: int | None,
    prompt_param: str = "messages",
    prompt_logprobs: int | None = None,
    structured: StructuredSpec | None = None,
    max_tokens_cap: int | None = None,
) -> SamplingSpec:
    """`max_tokens_cap`: with max_tokens None, the most the default may be
    (Anthropic's max_tokens is such a cap, not a demand)."""
    info = ctx.engine.info
    defaults = info.generation_defaults
    special = ctx.tokenizer.special
    # The trap: Lemur's eos is `</s>` but a turn ends with `<|im_end|>`.
    # Stop there too unless the client asked to ignore stop tokens.
    stop_ids = () if req.ignore_eos or special.im_end_id is None else (special.im_end_id,)
    top_k = req.top_k if req.top_k is not None else int(defaults.get("top_k", 0))
    if top_k >= info.vocab_size:
        top_k = 0  # keeping the whole vocabulary is no top-k at all

    def pick(value: float | None, key: str, neutral: float) -> float:
        return float(value) if value is not None else float(defaults.get(key, neutral))

    cap = ctx.config.max_tokens_limit if max_tokens_cap is None else min(ctx.config.max_tokens_limit, max_tokens_cap)
    spec = SamplingSpec(
        n=req.n,
        max_tokens=resolve_max_tokens(max_tokens, prompt_len, info.max_model_len, prompt_param, cap=cap),
        min_tokens=req.min_tokens,
        temperature=pick(req.temperature, "temperature", 1.0),
        top_p=pick(req.top_p, "top_p", 1.0),
        top_k=0 if top_k < 0 else top_k,
        min_p=pick(req.min_p, "min_p", 0.0),
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=pick(req.repetition_penalty, "repetition_penalty", 1.0),
        stop=tuple(req.stop_list()),
        stop_token_ids=stop_ids,
        ignore_eos=req.ignore_eos,
        logit_bias=parse_logit_bias(req.logit_bias, info.vocab_size),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        structured=structured,
    )
    check_min_tokens(spec)
    return spec


def check_min_tokens(spec: SamplingSpec) -> None:
    if spec.min_tokens > spec.max_tokens:
        raise InvalidRequest(
            f"min_tokens ({spec.min_tokens}) must not exceed max_tokens ({spec.max_tokens})",
            param="min_tokens",
        )
