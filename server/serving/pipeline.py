"""The one pipeline of a generation request, from a parsed body to a response:
prepare off the event loop, reserve the token budget, admission,
run, stream (with a watchdog on slow readers), release and settle. The routes
(server/routes.py) only hand a body and its service to `serve`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol, TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from lemur.server.admission import Permit
from lemur.server.errors import ServiceUnavailable
from lemur.server.protocol.chat import ChatCompletionRequest
from lemur.server.protocol.completions import CompletionRequest
from lemur.server.protocol.messages import MessagesRequest
from lemur.server.serving import respond
from lemur.server.serving.context import Caller, ServingContext
from lemur.server.serving.generation import most_tokens
from lemur.server.serving.prepare_pool import Turn
from lemur.server.serving.respond import Prepared
from lemur.server.serving.responses import ResponsesTurn
from lemur.server.serving.sse import EventStream
from lemur.server.serving.structured import NotConverted

T = TypeVar("T")
B = TypeVar("B", ChatCompletionRequest, CompletionRequest, ResponsesTurn, MessagesRequest)
logger = logging.getLogger("lemur.requests")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class SlowClient(Exception):
    """The client stopped reading its stream."""


class WriteWatchdog:
    """Notices a send that has not completed for `timeout` seconds (the
    client stopped reading and the socket buffers are full) and turns it into
    SlowClient. One timer per response, re-armed lazily, rather than one per
    chunk: a stream sends hundreds of chunks and nearly all complete at once."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.fired = False
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task | None = None
        self._sending_since: float | None = None
        self._timer = self._loop.call_later(timeout, self._check)

    async def send(self, send: Send, message: Message) -> None:
        if self._task is None:
            self._task = asyncio.current_task()  # Starlette sends from a child task of its own
        self._sending_since = self._loop.time()
        try:
            await send(message)
        except asyncio.CancelledError:
            if self.fired and self._task is not None and self._task.uncancel() == 0:
                raise SlowClient from None
            raise
        self._sending_since = None

    def _check(self) -> None:
        since = self._sending_since
        if since is None:
            self._timer = self._loop.call_later(self.timeout, self._check)
        elif self._loop.time() - since >= self.timeout:
            self.fired = True
            if self._task is not None:
                self._task.cancel()
        else:
            self._timer = self._loop.call_at(since + self.timeout, self._check)

    def stop(self) -> None:
        self._timer.cancel()


class EventStreamResponse(StreamingResponse):
    """SSE response that always closes its event stream, so the engine request
    behind it is aborted even if the client left before the body started, and
    that gives up on a client that stops reading: a write that cannot go out
    for `write_timeout` seconds (the socket buffers are full) ends it.
    `finish` (release the slot, settle the token budget) runs once at the end."""

    def __init__(
        self, stream: EventStream, finish: Callable[[], None], write_timeout: float, on_slow: Callable[[], None]
    ) -> None:
        super().__init__(stream.events, media_type="text/event-stream", headers=SSE_HEADERS)
        self._stream = stream
        self._finish = finish
        self._write_timeout = write_timeout
        self._on_slow = on_slow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watchdog = WriteWatchdog(self._write_timeout)
        try:
            await super().__call__(scope, receive, partial(watchdog.send, send))
        except SlowClient:
            logger.warning("cut a stream whose client read nothing for %.0fs", self._write_timeout)
            self._on_slow()  # uvicorn closes the connection: the response never completed
        finally:
            watchdog.stop()
            try:
                await self._stream.aclose()
            finally:
                self._finish()


class WholeResponse(Response):
    """A whole JSON body, under the same write timeout as a stream: a client
    that reads none of a large answer does not hold it in memory for ever.
    The body goes out in pieces, since uvicorn waits for the socket to drain
    only before its next write: sent in one, 8 MB would sit in its buffer."""

    media_type = "application/json"
    piece = 64 * 1024

    def __init__(self, body: bytes, write_timeout: float, on_slow: Callable[[], None]) -> None:
        super().__init__(body)
        self._write_timeout = write_timeout
        self._on_slow = on_slow

    async def _send_pieces(self, send: Callable[[Message], Awaitable[None]]) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body, size = memoryview(self.body), len(self.body)
        for start in range(0, max(size, 1), self.piece):
            end = start + self.piece
            await send({"type": "http.response.body", "body": bytes(body[start:end]), "more_body": end < size})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watchdog = WriteWatchdog(self._write_timeout)
        try:
            await self._send_pieces(partial(watchdog.send, send))
        except SlowClient:
            logger.warning("gave up on a client that read nothing of its answer for %.0fs", self._write_timeout)
            self._on_slow()
        finally:
            watchdog.stop()


class ClientDisconnected(Exception):
    """The client went away before the response was ready."""


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work` unless the client disconnects first; then cancel it, which
    closes its engine stream and so aborts the engine request."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.create_task(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected
    return task.result()


class Service(Protocol[B]):
    """What an endpoint's serving class offers (ChatService, CompletionService):
    turning its body into engine requests and a way to answer."""

    def prepare(self, body: B, caller: Caller, convert: bool = True) -> Prepared:
        """`convert` False: use only grammars already converted, else raise NotConverted."""
        ...


async def _prepare(request: Request, service: Service[B], body: B, caller: Caller) -> tuple[Prepared, Turn | None]:
    """Render, tokenize and build the grammar: first as a plain prompt would
    (agents resend the same tools, so the grammar is nearly always cached);
    on a schema not yet converted, again on the grammar threads, in a turn of
    the key's lane (returned: the caller ends it), and no longer than the
    client waits."""
    ctx: ServingContext = request.app.state.ctx
    param = body.prompt_param
    chars = body.text_chars()
    try:  # with tools or a schema on a prompt thread, as rendering them takes a while
        inline = not body.needs_grammar()
        return await ctx.pool.run(service.prepare, body, caller, False, chars=chars, param=param, inline=inline), None
    except NotConverted:
        pass

    async def converting() -> tuple[Prepared, Turn]:
        turn = await ctx.pool.take_turn(caller.key_name)
        try:
            return await ctx.pool.convert(turn, service.prepare, body, caller, True, chars=chars, param=param), turn
        except BaseException:
            turn.request_done()
            raise

    return await until_disconnected(request, converting())


async def serve(request: Request, service: Service[B], body: B) -> Response:
    """The one pipeline of a generation request. Authentication and the key's
    request rate (from the headers), the body-size cap and strict parsing
    happened before this; then, cheapest first: render and tokenize off the
    event loop, reserve the token budget, admission weighted by sequences,
    run, stream, and at the end release the slot and settle the budget."""
    ctx: ServingContext = request.app.state.ctx
    if not ctx.engine.is_alive():
        raise ServiceUnavailable("the inference engine is not running")
    caller: Caller = request.state.caller  # its requests per minute were counted with its key
    prepared, turn = await _prepare(request, service, body, caller)
    if ctx.config.log_prompts:
        logger.info("prompt", extra={"body": body.model_dump(exclude_none=True)})
    try:
        return await _run(request, ctx, prepared, bool(body.stream), turn)
    except BaseException:
        if turn is not None:
            turn.request_done()  # else it is done at the first output, or when the response ends
        raise


async def _run(request: Request, ctx: ServingContext, prepared: Prepared, stream: bool, turn: Turn | None) -> Response:
    """Run a prepared request, ending its grammar turn (if any) at its first output."""
    request.state.model = prepared.model  # for the access log line
    account = prepared.account
    account.reserve(most_tokens(prepared.engine_requests))

    async def admitted() -> tuple[Permit, EventStream | respond.Whole]:
        permit = await ctx.admission.acquire(prepared.sequences())
        first_output = turn.request_done if turn is not None else None
        try:
            if stream:
                return permit, await respond.stream(ctx, prepared, first_output)
            return permit, await respond.complete(ctx, prepared, first_output)
        except BaseException:
            permit.release()
            raise

    try:
        permit, result = await until_disconnected(request, admitted())
    except BaseException:
        account.settle()
        raise

    def finish() -> None:
        permit.release()
        account.settle()
        if turn is not None:
            turn.request_done()  # a stream that ended before its first output

    if isinstance(result, EventStream):
        return EventStreamResponse(result, finish, ctx.config.stream_write_timeout, ctx.metrics.slow_clients.inc)
    finish()
    if ctx.config.log_prompts:
        logger.info("output", extra={"response": result.model.model_dump(exclude_none=True)})
    return WholeResponse(result.body, ctx.config.stream_write_timeout, ctx.metrics.slow_clients.inc)
