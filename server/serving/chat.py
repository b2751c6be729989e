"""Chat completions: messages -> ChatML prompt -> engine -> OpenAI responses."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from server.engine import EngineOutput, EngineRequest, TokenLogprob
from server.errors import APIError, InvalidRequest
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
from server.serving.context import Account, Caller, ServingContext, new_request_id
from server.serving.generation import collect, generate, prime
from server.serving.limits import check_max_tokens, check_sequences
from server.serving.sampling import build_sampling
from server.serving.sse import SSE_DONE, EventStream, sse, sse_error


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


@dataclass(frozen=True)
class PreparedChat:
    request: ChatCompletionRequest
    engine_request: EngineRequest
    model: str
    created: int
    account: Account

    @property
    def engine_requests(self) -> tuple[EngineRequest, ...]:
        return (self.engine_request,)


class ChatService:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    def prepare(self, req: ChatCompletionRequest, caller: Caller) -> PreparedChat:
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
        return PreparedChat(req, engine_request, model, int(time.time()), caller.account())

    async def complete(self, p: PreparedChat) -> ChatCompletionResponse:
        results = await collect(self.ctx, p.engine_request, p.account)
        choices = [
            ChatChoice(
                index=r.index,
                message=ChatResponseMessage(content=r.text),
                logprobs=_logprobs(self.ctx, r.logprobs) if p.request.logprobs else None,
                finish_reason=r.finish_reason,
            )
            for r in results
        ]
        return ChatCompletionResponse(
            id=p.engine_request.request_id,
            created=p.created,
            model=p.model,
            choices=choices,
            usage=Usage.of(len(p.engine_request.prompt_token_ids), sum(len(r.token_ids) for r in results)),
        )

    async def stream(self, p: PreparedChat) -> EventStream:
        """SSE events. The first engine output is awaited before this returns, so
        errors that happen before any token still get a real HTTP status."""
        first, outputs = await prime(generate(self.ctx, p.engine_request, p.account))
        return EventStream(self._events(p, first, outputs), outputs)

    async def _events(
        self, p: PreparedChat, first: EngineOutput | None, outputs: AsyncIterator[EngineOutput]
    ) -> AsyncIterator[str]:
        rid, model, created = p.engine_request.request_id, p.model, p.created
        with_usage = p.request.include_usage()

        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
            extra = {"usage": usage} if with_usage else {}
            return sse(ChatCompletionChunk(id=rid, created=created, model=model, choices=choices, **extra))

        completion_tokens = 0
        # The role chunks go out in the same write as the first content, so a
        # client sees the first token no later than the role.
        pending = "".join(
            chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""), finish_reason=None)])
            for i in range(p.engine_request.sampling.n)
        )
        async with aclosing(outputs):
            try:
                out = first
                while out is not None:
                    completion_tokens += len(out.token_ids)
                    if event := self._delta(p, out, chunk):
                        yield pending + event
                        pending = ""
                    out = await anext(outputs, None)
            except APIError as exc:
                yield pending + sse_error(exc)
                yield SSE_DONE
                return
        if with_usage:
            pending += chunk([], Usage.of(len(p.engine_request.prompt_token_ids), completion_tokens))
        yield pending + SSE_DONE

    def _delta(self, p: PreparedChat, out: EngineOutput, chunk: Callable[..., str]) -> str | None:
        if not out.text and out.finish_reason is None and not out.logprobs:
            return None  # e.g. a token that is half of a UTF-8 character
        choice = ChatChunkChoice(index=out.index, delta=ChatDelta(content=out.text), finish_reason=out.finish_reason)
        if p.request.logprobs and out.logprobs:
            choice.logprobs = _logprobs(self.ctx, out.logprobs)
        return chunk([choice])
