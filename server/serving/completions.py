"""Legacy completions: prompt(s) -> engine -> OpenAI text_completion objects."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from server.engine import EngineOutput, EngineRequest, TokenLogprob
from server.errors import APIError
from server.protocol.common import Usage
from server.protocol.completions import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from server.serving.context import Account, Caller, ServingContext, new_request_id
from server.serving.generation import collect_all, merge, prime
from server.serving.limits import check_echo_logprobs, check_max_tokens, check_sequences
from server.serving.sampling import build_sampling, check_token_ids
from server.serving.sse import SSE_DONE, EventStream, sse, sse_error


@dataclass(frozen=True)
class PromptInput:
    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class PreparedCompletion:
    request: CompletionRequest
    prompts: tuple[PromptInput, ...]
    engine_requests: tuple[EngineRequest, ...]
    model: str
    created: int
    account: Account

    @property
    def id(self) -> str:
        return self.engine_requests[0].request_id.rsplit("-", 1)[0]

    def prompt_tokens(self) -> int:
        return sum(len(p.token_ids) for p in self.prompts)


def _logprobs(items: Sequence[TokenLogprob | None], start_offset: int, first_token: str = "") -> CompletionLogprobs:
    """OpenAI's completion logprobs; a None item is the first prompt token
    (echo), which has no logprob: it is shown as `first_token`."""
    out = CompletionLogprobs()
    offset = start_offset
    for lp in items:
        if lp is None:
            out.tokens.append(first_token)
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            out.text_offset.append(offset)
            offset += len(first_token)
            continue
        out.tokens.append(lp.token)
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append({t: v for _, t, v in lp.top} if lp.top else {lp.token: lp.logprob})
        out.text_offset.append(offset)
        offset += len(lp.token)
    return out


class CompletionService:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    def _prompt(self, prompt: str | list[int]) -> PromptInput:
        tok = self.ctx.tokenizer
        if isinstance(prompt, str):
            return PromptInput(prompt, tuple(tok.encode(prompt, add_special_tokens=True)))
        check_token_ids(prompt, self.ctx.engine.info.vocab_size, "prompt")
        return PromptInput(tok.decode(prompt), tuple(prompt))

    def _first_token(self, prompt: PromptInput) -> str:
        return self.ctx.tokenizer.decode(list(prompt.token_ids[:1]), skip_special_tokens=True)

    def prepare(self, req: CompletionRequest, caller: Caller) -> PreparedCompletion:
        config = self.ctx.config
        model = self.ctx.resolve_model(req.model)
        raw_prompts = req.prompts()
        check_sequences(config, req.n, prompts=len(raw_prompts))  # before any tokenizing
        check_max_tokens(config, req.max_tokens)
        prompts = tuple(self._prompt(p) for p in raw_prompts)
        if req.echo and req.logprobs is not None:
            check_echo_logprobs(config, sum(len(p.token_ids) for p in prompts), req.n)
        rid = new_request_id("cmpl")
        engine_requests = tuple(
            EngineRequest(
                f"{rid}-{i}",
                p.token_ids,
                build_sampling(
                    self.ctx,
                    req,
                    prompt_len=len(p.token_ids),
                    max_tokens=req.max_tokens,
                    logprobs=req.logprobs,
                    prompt_param="prompt",
                    prompt_logprobs=req.logprobs if req.echo and req.logprobs is not None else None,
                ),
                self.ctx.cache_salt(caller),
            )
            for i, p in enumerate(prompts)
        )
        return PreparedCompletion(req, prompts, engine_requests, model, int(time.time()), caller.account())

    async def complete(self, p: PreparedCompletion) -> CompletionResponse:
        n = p.request.n
        choices = []
        completion_tokens = 0
        for i, results in enumerate(await collect_all(self.ctx, p.engine_requests, p.account)):
            prompt = p.prompts[i]
            for r in results:
                completion_tokens += len(r.token_ids)
                text = (prompt.text if p.request.echo else "") + r.text
                logprobs = None
                if p.request.logprobs is not None:
                    items: list[TokenLogprob | None] = []
                    if p.request.echo:
                        items.extend(r.prompt_logprobs or ())
                    items.extend(r.logprobs)
                    logprobs = _logprobs(items, 0, self._first_token(prompt))
                choices.append(
                    CompletionChoice(index=i * n + r.index, text=text, logprobs=logprobs, finish_reason=r.finish_reason)
                )
        return CompletionResponse(
            id=p.id,
            created=p.created,
            model=p.model,
            choices=choices,
            usage=Usage.of(p.prompt_tokens(), completion_tokens),
        )

    async def stream(self, p: PreparedCompletion) -> EventStream:
        first, outputs = await prime(merge(self.ctx, p.engine_requests, p.account))
        return EventStream(self._events(p, first, outputs), outputs)

    async def _events(
        self,
        p: PreparedCompletion,
        first: tuple[int, EngineOutput] | None,
        outputs: AsyncIterator[tuple[int, EngineOutput]],
    ) -> AsyncIterator[str]:
        req, n = p.request, p.request.n
        with_usage = req.include_usage()
        echoed: set[int] = set()
        # With n > 1, vLLM sends a prompt's logprobs with one choice only; every
        # choice echoes the prompt, so remember them per prompt.
        prompt_lps: dict[int, tuple[TokenLogprob | None, ...]] = {}
        offsets: dict[int, int] = {}
        completion_tokens = 0

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
            extra = {"usage": usage} if with_usage else {}
            return sse(CompletionResponse(id=p.id, created=p.created, model=p.model, choices=choices, **extra))

        async with aclosing(outputs):
            try:
                item = first
                while item is not None:
                    prompt_index, out = item
                    index = prompt_index * n + out.index
                    completion_tokens += len(out.token_ids)
                    text = out.text
                    lp_items: list[TokenLogprob | None] = list(out.logprobs or [])
                    if out.prompt_logprobs is not None:
                        prompt_lps[prompt_index] = out.prompt_logprobs
                    if req.echo and index not in echoed:
                        echoed.add(index)
                        text = p.prompts[prompt_index].text + text
                        lp_items = list(prompt_lps.get(prompt_index, ())) + lp_items
                    if text or out.finish_reason is not None or lp_items:
                        choice = CompletionChoice(index=index, text=text, finish_reason=out.finish_reason)
                        if req.logprobs is not None:
                            first_token = self._first_token(p.prompts[prompt_index])
                            choice.logprobs = _logprobs(lp_items, offsets.get(index, 0), first_token)
                        offsets[index] = offsets.get(index, 0) + len(text)
                        yield chunk([choice])
                    item = await anext(outputs, None)
            except APIError as exc:
                yield sse_error(exc)
                yield SSE_DONE
                return
        if with_usage:
            yield chunk([], Usage.of(p.prompt_tokens(), completion_tokens))
        yield SSE_DONE
