"""From engine outputs to OpenAI responses, for every generation endpoint:
one collector (a whole response) and one streaming loop (SSE events).

An endpoint says only how its objects look, through an `Answer`: its chunk
for one engine output, its usage chunk, its whole response. Running the
engine requests, counting tokens, error events, `[DONE]` and closing the
engine stream happen here, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel

from lemur.server.engine import EngineOutput, EngineRequest, TokenLogprob
from lemur.server.errors import APIError
from lemur.server.protocol.common import Usage
from lemur.server.serving.context import Account, ServingContext
from lemur.server.serving.generation import Heartbeat, merge, prime, with_heartbeats
from lemur.server.serving.sse import EventStream


@dataclass
class ChoiceResult:
    """One finished choice, accumulated from its deltas."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    cached_tokens: int | None = None
    stop_reason: int | str | None = None  # the stop string or token that ended it

    def add(self, out: EngineOutput) -> None:
        self.text += out.text
        self.token_ids.extend(out.token_ids)
        if out.logprobs:
            self.logprobs.extend(out.logprobs)
        if out.finish_reason is not None:
            self.finish_reason, self.stop_reason = out.finish_reason, out.stop_reason
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        if out.cached_tokens is not None:
            self.cached_tokens = out.cached_tokens


class Answer(Protocol):
    """How one endpoint's objects and events look. `events` may keep state
    across the outputs of one stream (an answer serves one request, once).
    Stream methods return SSE text ('' for nothing)."""

    # An event to send while the first token is awaited (Anthropic's `ping`),
    # or None: the stream then starts with the first token, so that errors
    # before it still get their own HTTP status.
    heartbeat: str | None

    def opening(self) -> str:
        """Events that go out with the first content."""
        ...

    def events(self, prompt_index: int, out: EngineOutput) -> str:
        """Events for one engine output."""
        ...

    async def closing(self, usage: Usage) -> str:
        """Events that end a stream."""
        ...

    def failed(self, exc: APIError) -> str:
        """Events that end a stream cut by an error (the status line is gone)."""
        ...

    def response(self, results: list[list[ChoiceResult]], usage: Usage) -> BaseModel:
        """The whole response: results[prompt][choice]."""
        ...

    async def finished(self, response: BaseModel) -> None:
        """Called with the whole response before it is sent."""
        ...


@dataclass(frozen=True)
class Prepared:
    """A request ready to run: what the engine gets, who pays, how to answer."""

    engine_requests: tuple[EngineRequest, ...]
    account: Account
    answer: Answer
    model: str  # the base's or an adapter's name, for the access log

    def sequences(self) -> int:
        return sum(r.sampling.n for r in self.engine_requests)

    def prompt_tokens(self) -> int:
        return sum(len(r.prompt_token_ids) for r in self.engine_requests)


async def collect(
    ctx: ServingContext,
    requests: Sequence[EngineRequest],
    account: Account,
    first_output: Callable[[], None] | None = None,
) -> list[list[ChoiceResult]]:
    """Run requests to the end: results[request][choice]. If one fails, the
    others are aborted and its error is raised. `first_output` is called
    when the first output arrives."""
    results = [[ChoiceResult(i) for i in range(r.sampling.n)] for r in requests]
    async with aclosing(merge(ctx, requests, account)) as outputs:
        async for i, out in outputs:
            if first_output is not None:
                first_output()
                first_output = None
            results[i][out.index].add(out)
    for choices in results:
        # With n > 1 vLLM sends a prompt's logprobs with one choice only; share them.
        shared = next((c.prompt_logprobs for c in choices if c.prompt_logprobs), None)
        for c in choices:
            c.prompt_logprobs = c.prompt_logprobs or shared
    return results


@dataclass(frozen=True)
class Whole:
    """A whole response: the object, and its JSON."""

    model: BaseModel
    body: bytes


# Above this many tokens and logprob entries, a response is built and
# serialized on a thread: an n=24 x 240 x top-20 answer took seconds of
# Python, which on the event loop would stall every stream and probe.
INLINE_ENTRIES = 4096


def _entries(results: list[list[ChoiceResult]]) -> int:
    return sum(len(c.token_ids) + sum(len(lp.top) for lp in c.logprobs) for cs in results for c in cs)


def _cached_tokens(results: list[list[ChoiceResult]]) -> int | None:
    """Prompt tokens found in the prefix cache, over all prompts; None if the engine does not say."""
    per_prompt = [[c.cached_tokens for c in choices if c.cached_tokens is not None] for choices in results]
    return sum(max(counts) for counts in per_prompt if counts) if any(per_prompt) else None


async def complete(ctx: ServingContext, p: Prepared, first_output: Callable[[], None] | None = None) -> Whole:
    results = await collect(ctx, p.engine_requests, p.account, first_output)
    completion_tokens = sum(len(c.token_ids) for choices in results for c in choices)
    usage = Usage.of(p.prompt_tokens(), completion_tokens, _cached_tokens(results))

    def dump(model: BaseModel) -> bytes:
        return model.model_dump_json(exclude_none=True).encode()

    if _entries(results) > INLINE_ENTRIES:
        model = await asyncio.to_thread(p.answer.response, results, usage)
        await p.answer.finished(model)
        return Whole(model, await asyncio.to_thread(dump, model))
    model = p.answer.response(results, usage)
    await p.answer.finished(model)
    return Whole(model, dump(model))


async def stream(ctx: ServingContext, p: Prepared, first_output: Callable[[], None] | None = None) -> EventStream:
    """SSE events. The first engine output is awaited before this returns, so
    errors that happen before any token still get a real HTTP status; an
    answer with a heartbeat starts sooner, at the first heartbeat, when the
    first token is slow (errors then come as that API's error event).
    `first_output` is called when the first output arrives."""
    outputs = merge(ctx, p.engine_requests, p.account)
    every = ctx.config.stream_ping_interval
    if p.answer.heartbeat is not None and every > 0:
        outputs = with_heartbeats(outputs, every)
    first, outputs = await prime(outputs)
    return EventStream(_events(p, first, outputs, first_output), outputs)


async def _events(
    p: Prepared,
    first: tuple[int, EngineOutput] | Heartbeat | None,
    outputs: AsyncIterator[tuple[int, EngineOutput] | Heartbeat],
    first_output: Callable[[], None] | None,
) -> AsyncIterator[str]:
    answer = p.answer
    completion_tokens = 0
    cached: dict[int, int] = {}  # per prompt: its tokens found in the prefix cache
    # Opening events go out in the same write as the first content, so a
    # client sees the first token no later than the role.
    pending = answer.opening()
    async with aclosing(outputs):
        try:
            item = first
            while item is not None:
                if isinstance(item, Heartbeat):
                    text = answer.heartbeat or ""
                else:
                    if first_output is not None:
                        first_output()
                        first_output = None
                    completion_tokens += len(item[1].token_ids)
                    if item[1].cached_tokens is not None:
                        cached[item[0]] = item[1].cached_tokens
                    text = answer.events(*item)
                if text:
                    yield pending + text
                    pending = ""
                item = await anext(outputs, None)
        except APIError as exc:
            yield pending + answer.failed(exc)
            return
    usage = Usage.of(p.prompt_tokens(), completion_tokens, sum(cached.values()) if cached else None)
    yield pending + await answer.closing(usage)
