"""Chat completions: messages -> ChatML prompt -> engine -> OpenAI responses."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pydantic import BaseModel

from server.engine import EngineOutput, EngineRequest, TokenLogprob
from server.errors import InvalidRequest
from server.protocol.chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatMessage,
    ChatResponseMessage,
    ChatTokenLogprob,
    TopLogprob,
)
from server.protocol.common import Usage
from server.serving.context import Caller, ServingContext, new_request_id
from server.serving.limits import check_max_tokens, check_sequences
from server.serving.respond import ChoiceResult, Prepared
from server.serving.sampling import build_sampling


def render_messages(ctx: ServingContext, messages: Sequence[ChatMessage], add_generation_prompt: bool) -> list[int]:
    """Token ids of the prompt. Message contents are data: a control-token
    string in them (`<|im_end|>`, `</s>`, ...) stays text, so no message can
    forge a turn; only the template's own markers are control tokens. The
    template adds `<s>` itself."""
    turns = [{"role": m.template_role(), "content": m.text()} for m in messages]
    if not any(ctx.tokenizer.has_control_text(t["content"]) for t in turns):
        # Nothing in the contents could become a control token: tokenize whole (the fast path).
        prompt = ctx.template.render(turns, add_generation_prompt=add_generation_prompt)
        return ctx.tokenizer.encode(prompt, add_special_tokens=False)
    prompt, spans = ctx.template.render_with_spans(turns, add_generation_prompt=add_generation_prompt)
    if spans is None:
        # This template transforms contents, so we cannot tell where they are;
        # refuse what would turn into control tokens rather than guess.
        raise InvalidRequest("message content contains control-token text, which this chat template cannot escape")
    return ctx.tokenizer.encode_prompt(prompt, spans)


def _logprobs(ctx: ServingContext, items: Sequence[TokenLogprob]) -> ChatLogprobs:
    tb = ctx.tokenizer.token_bytes
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=lp.token,
                logprob=lp.logprob,
                bytes=tb(lp.token_id, lp.token),
                top_logprobs=[TopLogprob(token=t, logprob=v, bytes=tb(i, t)) for i, t, v in lp.top],
            )
            for lp in items
        ]
    )


class ChatAnswer:
    """Chat completion objects for one request (see respond.Answer)."""

    def __init__(self, ctx: ServingContext, req: ChatCompletionRequest, rid: str, model: str) -> None:
        self.ctx, self.req, self.rid, self.model = ctx, req, rid, model
        self.created = int(time.time())
        self.include_usage = req.include_usage()

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.rid, created=self.created, model=self.model, choices=choices, usage=usage)

    def opening(self) -> list[BaseModel]:
        role = ChatDelta(role="assistant", content="")
        return [self._chunk([ChatChunkChoice(index=i, delta=role, finish_reason=None)]) for i in range(self.req.n)]

    def delta(self, prompt_index: int, out: EngineOutput) -> BaseModel | None:
        if not out.text and out.finish_reason is None and not out.logprobs:
            return None  # e.g. a token that is half of a UTF-8 character
        choice = ChatChunkChoice(index=out.index, delta=ChatDelta(content=out.text), finish_reason=out.finish_reason)
        if self.req.logprobs and out.logprobs:
            choice.logprobs = _logprobs(self.ctx, out.logprobs)
        return self._chunk([choice])

    def usage_chunk(self, usage: Usage) -> BaseModel:
        return self._chunk([], usage)

    def response(self, results: list[list[ChoiceResult]], usage: Usage) -> BaseModel:
        choices = [
            ChatChoice(
                index=r.index,
                message=ChatResponseMessage(content=r.text),
                logprobs=_logprobs(self.ctx, r.logprobs) if self.req.logprobs else None,
                finish_reason=r.finish_reason,
            )
            for r in results[0]
        ]
        return ChatCompletionResponse(id=self.rid, created=self.created, model=self.model, choices=choices, usage=usage)


class ChatService:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    def prepare(self, req: ChatCompletionRequest, caller: Caller) -> Prepared:
        ctx = self.ctx
        model = ctx.resolve_model(req.model)
        check_sequences(ctx.config, req.n, prompts=1)
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        check_max_tokens(ctx.config, req.requested_max_tokens(), param)
        prompt_ids = render_messages(ctx, req.messages, req.add_generation_prompt)
        top = (req.top_logprobs or 0) if req.logprobs else None
        spec = build_sampling(ctx, req, prompt_len=len(prompt_ids), max_tokens=req.requested_max_tokens(), logprobs=top)
        rid = new_request_id("chatcmpl")
        engine_request = EngineRequest(rid, tuple(prompt_ids), spec, ctx.cache_salt(caller))
        return Prepared((engine_request,), caller.account(), ChatAnswer(ctx, req, rid, model))
