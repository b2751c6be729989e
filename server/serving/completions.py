"""Legacy completions: prompt(s) -> engine -> OpenAI text_completion objects."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from lemur.server.engine import EngineOutput, EngineRequest, TokenLogprob
from lemur.server.protocol.common import Usage
from lemur.server.protocol.completions import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from lemur.server.serving.context import Caller, ServingContext, new_request_id
from lemur.server.serving.limits import (
    check_echo_logprobs,
    check_logprob_entries,
    check_max_tokens,
    check_sequences,
)
from lemur.server.serving.respond import ChoiceResult, Prepared
from lemur.server.serving.sampling import build_sampling, check_token_ids
from lemur.server.serving.sse import ChunkStream
from lemur.server.tokenizer import Tokenizer


@dataclass(frozen=True)
class PromptInput:
    text: str
    token_ids: tuple[int, ...]


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


class CompletionAnswer(ChunkStream):
    """text_completion objects for one request (see respond.Answer). Choice
    `i * n + j` is prompt i's j-th sample; echo prefixes each choice's first
    text (and its logprobs) with the prompt's."""

    def __init__(self, tokenizer: Tokenizer, req: CompletionRequest, prompts: tuple[PromptInput, ...], rid: str,
                 model: str) -> None:  # fmt: skip
        self.tokenizer, self.req, self.prompts, self.id, self.model = tokenizer, req, prompts, rid, model
        self.created = int(time.time())
        self.include_usage = req.include_usage()
        self._echoed: set[int] = set()
        # With n > 1, vLLM sends a prompt's logprobs with one choice only; every
        # choice echoes the prompt, so remember them per prompt.
        self._prompt_lps: dict[int, tuple[TokenLogprob | None, ...]] = {}
        self._offsets: dict[int, int] = {}

    def _first_token(self, prompt_index: int) -> str:
        return self.tokenizer.decode(list(self.prompts[prompt_index].token_ids[:1]), skip_special_tokens=True)

    def _object(self, choices: list[CompletionChoice], usage: Usage | None = None) -> CompletionResponse:
        return CompletionResponse(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)

    def chunk(self, prompt_index: int, out: EngineOutput) -> BaseModel | None:
        index = prompt_index * self.req.n + out.index
        text = out.text
        lp_items: list[TokenLogprob | None] = list(out.logprobs or [])
        if out.prompt_logprobs is not None:
            self._prompt_lps[prompt_index] = out.prompt_logprobs
        if self.req.echo and index not in self._echoed:
            self._echoed.add(index)
            text = self.prompts[prompt_index].text + text
            lp_items = list(self._prompt_lps.get(prompt_index, ())) + lp_items
        if not text and out.finish_reason is None and not lp_items:
            return None
        choice = CompletionChoice(index=index, text=text, finish_reason=out.finish_reason)
        if self.req.logprobs is not None:
            choice.logprobs = _logprobs(lp_items, self._offsets.get(index, 0), self._first_token(prompt_index))
        self._offsets[index] = self._offsets.get(index, 0) + len(text)
        return self._object([choice])

    def usage_chunk(self, usage: Usage) -> BaseModel:
        return self._object([], usage)

    def response(self, results: list[list[ChoiceResult]], usage: Usage) -> BaseModel:
        req, choices = self.req, []
        for i, prompt_results in enumerate(results):
            for r in prompt_results:
                logprobs = None
                if req.logprobs is not None:
                    items: list[TokenLogprob | None] = [*(r.prompt_logprobs or ())] if req.echo else []
                    items.extend(r.logprobs)
                    logprobs = _logprobs(items, 0, self._first_token(i))
                text = (self.prompts[i].text if req.echo else "") + r.text
                choices.append(CompletionChoice(index=i * req.n + r.index, text=text, logprobs=logprobs,
                                                finish_reason=r.finish_reason))  # fmt: skip
        return self._object(choices, usage)


class CompletionService:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    def _prompt(self, prompt: str | list[int]) -> PromptInput:
        tok = self.ctx.tokenizer
        if isinstance(prompt, str):
            return PromptInput(prompt, tuple(tok.encode(prompt, add_special_tokens=True)))
        check_token_ids(prompt, self.ctx.engine.info.vocab_size, "prompt")
        return PromptInput(tok.decode(prompt), tuple(prompt))

    def prepare(self, req: CompletionRequest, caller: Caller, convert: bool = True) -> Prepared:
        config = self.ctx.config
        target = self.ctx.resolve_model(req.model)
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
                self.ctx.cache_salt(caller, target.adapter),
                target.adapter,
            )
            for i, p in enumerate(prompts)
        )
        check_logprob_entries(config, engine_requests, "logprobs")
        answer = CompletionAnswer(self.ctx.tokenizer, req, prompts, rid, target.name)
        return Prepared(engine_requests, caller.account(), answer, target.name)
