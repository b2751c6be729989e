"""Running engine requests: metrics, error mapping, fan-in.

`generate` is the one wrapper around `Engine.generate`: it tracks metrics,
maps engine errors to API errors, and makes sure that closing the stream (a
client disconnect, a cancelled task) aborts the engine request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import replace
from typing import TypeVar

from lemur.server.engine import EngineDeadError, EngineOutput, EngineRejectedRequest, EngineRequest
from lemur.server.errors import APIError, InternalServerError, InvalidRequest, RequestTimeout, ServiceUnavailable
from lemur.server.serving.context import Account, ServingContext

T = TypeVar("T")


logger = logging.getLogger("lemur.generation")

# vLLM's finish reasons beyond OpenAI's: "repetition" (repetition detection)
# reads as a stop; "abort" and "error" mean the engine gave up on the request.
_FINISH = {"stop": "stop", "length": "length", "repetition": "stop"}


def _openai_finish(out: EngineOutput) -> EngineOutput:
    if out.finish_reason is None or out.finish_reason in ("stop", "length"):
        return out
    if out.finish_reason == "error":
        raise InternalServerError("the engine failed while generating this request")
    if out.finish_reason == "abort":
        raise ServiceUnavailable("the engine aborted this request")
    return replace(out, finish_reason=_FINISH.get(out.finish_reason, "stop"))


async def _next_before(outputs: AsyncIterator[EngineOutput], deadline: float | None) -> EngineOutput | None:
    if deadline is None:
        return await anext(outputs, None)
    try:
        async with asyncio.timeout_at(deadline):
            return await anext(outputs, None)
    except TimeoutError:
        raise RequestTimeout("the request did not finish within the server's request timeout") from None


async def generate(ctx: ServingContext, request: EngineRequest, account: Account) -> AsyncIterator[EngineOutput]:
    adapter = request.adapter
    if adapter is not None:
        ctx.lora_registry.acquire(adapter)  # 404 if unloaded meanwhile; an unload waits for the requests using it
    try:
        async with aclosing(_generate(ctx, request, account)) as outputs:  # closed with us: the abort runs now
            async for out in outputs:
                yield out
    finally:
        if adapter is not None:
            ctx.lora_registry.release(adapter)


async def _generate(ctx: ServingContext, request: EngineRequest, account: Account) -> AsyncIterator[EngineOutput]:
    model = request.adapter.name if request.adapter is not None else ctx.metrics.model_name
    tracker = ctx.metrics.track(len(request.prompt_token_ids), account.key_name, model)
    timeout = ctx.config.request_timeout
    deadline = asyncio.get_running_loop().time() + timeout if timeout else None
    reason = "abort"
    finished = 0
    ctx.state.inflight.add(request.request_id)
    try:
        async with aclosing(ctx.engine.generate(request)) as outputs:
            while (out := await _next_before(outputs, deadline)) is not None:
                tracker.on_tokens(len(out.token_ids))
                out = _openai_finish(out)
                if out.finish_reason is not None:
                    finished += 1
                    reason = out.finish_reason
                yield out
        if finished < request.sampling.n:
            reason = "abort"
    except EngineRejectedRequest as exc:
        reason = "error"
        raise InvalidRequest(str(exc), param=exc.param) from exc
    except EngineDeadError as exc:
        reason = "error"
        raise ServiceUnavailable("the inference engine is not available") from exc
    except APIError:
        reason = "error"
        raise
    except Exception as exc:  # a fault of ours or the engine's: a 500 / an error event, never a dropped stream
        reason = "error"
        logger.exception("request %s failed", request.request_id)
        raise InternalServerError("internal error while generating") from exc
    finally:
        ctx.state.inflight.discard(request.request_id)
        tracker.finish(reason)
        account.use(len(request.prompt_token_ids) + tracker.tokens)


def most_tokens(requests: Sequence[EngineRequest]) -> int:
    """The most tokens requests can cost: prompts + n x max_tokens each (what
    the caller's token budget reserves up front; ignore_eos counts in full)."""
    return sum(len(r.prompt_token_ids) + r.sampling.n * r.sampling.max_tokens for r in requests)


async def prime(stream: AsyncIterator[T]) -> tuple[T | None, AsyncIterator[T]]:
    """Wait for a stream's first item, so that a request that fails before
    producing anything fails before the HTTP response has started."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        return None, stream
    except BaseException:
        await stream.aclose()  # type: ignore[attr-defined]
        raise
    return first, stream


class Heartbeat:
    """What `with_heartbeats` yields for a wait without output."""


HEARTBEAT = Heartbeat()


async def with_heartbeats(stream: AsyncGenerator[T, None], every: float) -> AsyncIterator[T | Heartbeat]:
    """The stream's items, and HEARTBEAT after each `every` seconds that pass
    before the first one (a long prefill); after it, the items alone."""
    pending = asyncio.ensure_future(anext(stream))
    try:
        while not (await asyncio.wait({pending}, timeout=every))[0]:
            yield HEARTBEAT
        try:
            first = pending.result()
        except StopAsyncIteration:
            return
        yield first
        async for item in stream:
            yield item
    finally:
        if not pending.done():  # closed while waiting: the cancel closes the stream, aborting its requests
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        await stream.aclose()


async def merge(
    ctx: ServingContext, requests: Sequence[EngineRequest], account: Account
) -> AsyncIterator[tuple[int, EngineOutput]]:
    """Interleave the streams of several requests as outputs arrive: (request index, output)."""
    if len(requests) == 1:
        async with aclosing(generate(ctx, requests[0], account)) as stream:
            async for out in stream:
                yield 0, out
        return

    # Bounded: a pump waits when the client reads slower than the engine writes.
    queue: asyncio.Queue[tuple[int, EngineOutput] | BaseException | None] = asyncio.Queue(256)

    async def pump(i: int, request: EngineRequest) -> None:
        try:
            async with aclosing(generate(ctx, request, account)) as stream:
                async for out in stream:
                    await queue.put((i, out))
            await queue.put(None)
        except Exception as exc:  # re-raised by the consumer below
            await queue.put(exc)

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
