"""HTTP routes: thin; the serving layer does the work, errors are raised."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from lemur.server.admission import Permit
from lemur.server.engine import EngineDeadError
from lemur.server.errors import ServiceUnavailable, error_body
from lemur.server.protocol.adapters import LoadLoraAdapterRequest, LoraAdapterResponse, UnloadLoraAdapterRequest
from lemur.server.protocol.chat import ChatCompletionRequest, ChatCompletionResponse
from lemur.server.protocol.common import ModelCard, ModelList, VersionResponse
from lemur.server.protocol.completions import CompletionRequest, CompletionResponse
from lemur.server.protocol.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from lemur.server.serving import respond
from lemur.server.serving.context import Caller, ServingContext, Target
from lemur.server.serving.generation import most_tokens
from lemur.server.serving.prompt import render_messages
from lemur.server.serving.respond import Prepared
from lemur.server.serving.sampling import check_token_ids
from lemur.server.serving.sse import EventStream
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from lemur import __version__

T = TypeVar("T")
B = TypeVar("B", ChatCompletionRequest, CompletionRequest)
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


class ClientDisconnected(Exception):
    """The client went away before the response was ready."""


def context(request: Request) -> ServingContext:
    return request.app.state.ctx


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

    def prepare(self, body: B, caller: Caller) -> Prepared: ...


async def serve(request: Request, service: Service[B], body: B) -> Response:
    """The one pipeline of a generation request. Authentication (from the
    headers), the body-size cap and strict parsing happened before this;
    then, cheapest first: the key's rate limit, render and tokenize off the
    event loop, reserve the token budget, admission weighted by sequences,
    run, stream, and at the end release the slot and settle the budget."""
    ctx = context(request)
    if not ctx.engine.is_alive():
        raise ServiceUnavailable("the inference engine is not running")
    caller: Caller = request.state.caller
    if caller.limits is not None:
        caller.limits.admit()
    param = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
    chars, heavy = body.text_chars(), body.needs_grammar()
    prepared = await ctx.pool.run(service.prepare, body, caller, chars=chars, param=param, heavy=heavy)
    request.state.model = prepared.model  # for the access log line
    account, stream = prepared.account, bool(body.stream)
    account.reserve(most_tokens(prepared.engine_requests))
    if ctx.config.log_prompts:
        logger.info("prompt", extra={"body": body.model_dump(exclude_none=True)})

    async def admitted() -> tuple[Permit, EventStream | BaseModel]:
        permit = await ctx.admission.acquire(prepared.sequences())
        try:
            return permit, await (respond.stream(ctx, prepared) if stream else respond.complete(ctx, prepared))
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

    if isinstance(result, EventStream):
        return EventStreamResponse(result, finish, ctx.config.stream_write_timeout, ctx.metrics.slow_clients.inc)
    finish()
    if ctx.config.log_prompts:
        logger.info("output", extra={"response": result.model_dump(exclude_none=True)})
    return JSONResponse(result.model_dump(exclude_none=True))


# Authentication happens before routing, from the headers (server/middleware.py).
api = APIRouter()
probes = APIRouter()


@api.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await serve(request, request.app.state.chat, body)


@api.post("/v1/completions", response_model=CompletionResponse)
async def completions(body: CompletionRequest, request: Request) -> Response:
    return await serve(request, request.app.state.completions, body)


def _model_card(ctx: ServingContext, target: Target) -> ModelCard:
    info = ctx.engine.info
    parent = ctx.model_name if target.adapter is not None else None
    return ModelCard(id=target.name, created=info.created, max_model_len=info.max_model_len, parent=parent)


@api.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    ctx = context(request)
    targets = [Target(ctx.model_name), *(Target(a.name, a.ref) for a in ctx.adapters.all())]
    return ModelList(data=[_model_card(ctx, t) for t in targets])


@api.get("/v1/models/{model:path}", response_model=ModelCard)
async def retrieve_model(model: str, request: Request) -> ModelCard:
    ctx = context(request)
    return _model_card(ctx, ctx.resolve_model(model))


@api.post("/v1/load_lora_adapter", response_model=LoraAdapterResponse)
async def load_lora_adapter(body: LoadLoraAdapterRequest, request: Request) -> LoraAdapterResponse:
    """Admin key only (server/middleware.py); off unless --lora-admin-key."""
    adapter, seconds = await request.app.state.adapters.load(body.lora_name, body.lora_path)
    parent = context(request).model_name
    return LoraAdapterResponse(
        name=adapter.name, parent=parent, status="loaded", rank=adapter.rank, load_seconds=round(seconds, 4)
    )


@api.post("/v1/unload_lora_adapter", response_model=LoraAdapterResponse)
async def unload_lora_adapter(body: UnloadLoraAdapterRequest, request: Request) -> LoraAdapterResponse:
    adapter = await request.app.state.adapters.unload(body.lora_name)
    return LoraAdapterResponse(
        name=adapter.name, parent=context(request).model_name, status="unloaded", rank=adapter.rank
    )


@api.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    ctx = context(request)
    ctx.resolve_model(body.model)
    caller: Caller = request.state.caller
    if caller.limits is not None:  # a request like any other: the key's RPM (and its tokens to TPM, below)
        caller.limits.admit()
    if body.messages is not None:
        chars = sum(len(m.text()) for m in body.messages)
        args = (render_messages, ctx, body.messages, body.add_generation_prompt, body.tools)
        tokens = await ctx.pool.run(*args, chars=chars, param="messages")
    else:
        args = (ctx.tokenizer.encode, body.prompt or "", body.add_special_tokens)
        tokens = await ctx.pool.run(*args, chars=len(body.prompt or ""), param="prompt")
    if caller.limits is not None:
        caller.limits.charge_tokens(len(tokens))
    return TokenizeResponse(count=len(tokens), max_model_len=ctx.engine.info.max_model_len, tokens=tokens)


@api.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    ctx = context(request)
    ctx.resolve_model(body.model)
    check_token_ids(body.tokens, ctx.engine.info.vocab_size, "tokens")
    return DetokenizeResponse(prompt=ctx.tokenizer.decode(body.tokens))


@api.get("/openapi.json", include_in_schema=False)
async def openapi_schema(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@api.get("/version", response_model=VersionResponse)
async def version(request: Request) -> VersionResponse:
    dtype = context(request).engine.info.dtype
    return VersionResponse(version=__version__, vllm=request.app.state.engine_version, dtype=dtype)


@probes.get("/health")
async def health(request: Request) -> Response:
    """Liveness: the process answers and the engine is alive."""
    ctx: ServingContext | None = getattr(request.app.state, "ctx", None)
    if ctx is None or not ctx.engine.is_alive():
        raise ServiceUnavailable("the inference engine is not running")
    try:
        await ctx.engine.check_health()
    except EngineDeadError as exc:
        raise ServiceUnavailable("the inference engine is not running") from exc
    return JSONResponse({"status": "ok"})


@probes.get("/ready")
async def ready(request: Request) -> Response:
    """Readiness: 200 only once the engine has served a request."""
    ctx: ServingContext | None = getattr(request.app.state, "ctx", None)
    if ctx is None or not ctx.engine.is_alive():
        raise ServiceUnavailable("the inference engine is not running")
    if ctx.state.draining:
        return JSONResponse(
            error_body("the server is shutting down", "server_error", None, "draining"), status_code=503
        )
    if not ctx.state.ready:
        return JSONResponse(error_body("the server is warming up", "server_error", None, "not_ready"), status_code=503)
    return JSONResponse({"status": "ready", "model": ctx.model_name})


@probes.get("/metrics")
async def metrics(request: Request) -> Response:
    ctx = context(request)
    if ctx.config.metrics_port is not None:
        raise StarletteHTTPException(404, f"/metrics is served on port {ctx.config.metrics_port}")
    return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
