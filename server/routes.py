"""HTTP routes: thin; the serving layer does the work (a generation request
goes through server/serving/pipeline.py), errors are raised."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from lemur import __version__
from lemur.server.engine import EngineDeadError
from lemur.server.errors import ServiceUnavailable, error_body
from lemur.server.protocol.chat import ChatCompletionRequest, ChatCompletionResponse
from lemur.server.protocol.common import ModelCard, ModelList, VersionResponse
from lemur.server.protocol.completions import CompletionRequest, CompletionResponse
from lemur.server.protocol.lora_admin import LoadLoraAdapterRequest, LoraAdapterResponse, UnloadLoraAdapterRequest
from lemur.server.protocol.messages import CountTokensRequest, MessageObject, MessagesRequest, TokenCount
from lemur.server.protocol.responses import ResponseObject, ResponsesRequest
from lemur.server.protocol.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from lemur.server.serving.context import Caller, ServingContext, Target
from lemur.server.serving.limits import check_detokenize
from lemur.server.serving.messages import MessagesService
from lemur.server.serving.pipeline import serve
from lemur.server.serving.prompt import render_messages
from lemur.server.serving.responses_service import ResponsesService
from lemur.server.serving.sampling import check_token_ids
from lemur.server.serving.structured import tool_chars


def context(request: Request) -> ServingContext:
    return request.app.state.ctx


# Authentication happens before routing, from the headers (server/middleware.py).
api = APIRouter()
probes = APIRouter()


@api.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await serve(request, request.app.state.chat, body)


@api.post("/v1/completions", response_model=CompletionResponse)
async def completions(body: CompletionRequest, request: Request) -> Response:
    return await serve(request, request.app.state.completions, body)


@api.post("/v1/responses", response_model=ResponseObject)
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    service: ResponsesService = request.app.state.responses
    return await serve(request, service, await service.begin(body, request.state.caller))


@api.post("/v1/messages", response_model=MessageObject)
async def create_message(body: MessagesRequest, request: Request) -> Response:
    """Anthropic's Messages API (Claude Code, the anthropic SDKs); its errors
    come in Anthropic's envelope (server/errors.py)."""
    return await serve(request, request.app.state.messages, body)


@api.post("/v1/messages/count_tokens", response_model=TokenCount)
async def count_message_tokens(body: CountTokensRequest, request: Request) -> TokenCount:
    ctx = context(request)
    service: MessagesService = request.app.state.messages
    chars = body.text_chars() + body.tool_chars()
    count = await ctx.pool.run(service.count_tokens, body, chars=chars, param="messages", inline=False)
    return TokenCount(input_tokens=count)


@api.get("/v1/responses/{response_id}", response_model=ResponseObject)
async def retrieve_response(response_id: str, request: Request) -> JSONResponse:
    return JSONResponse(await request.app.state.responses.retrieve(response_id, request.state.caller))


@api.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> JSONResponse:
    return JSONResponse(await request.app.state.responses.delete(response_id, request.state.caller))


@api.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> JSONResponse:
    service: ResponsesService = request.app.state.responses
    return JSONResponse(await service.input_items(response_id, request.state.caller, limit, order, after))


def _model_card(ctx: ServingContext, target: Target) -> ModelCard:
    info = ctx.engine.info
    parent = ctx.model_name if target.adapter is not None else None
    return ModelCard(id=target.name, created=info.created, max_model_len=info.max_model_len, parent=parent)


@api.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    ctx = context(request)
    targets = [Target(ctx.model_name), *(Target(a.name, a.ref) for a in ctx.lora_registry.all())]
    return ModelList(data=[_model_card(ctx, t) for t in targets])


@api.get("/v1/models/{model:path}", response_model=ModelCard)
async def retrieve_model(model: str, request: Request) -> ModelCard:
    ctx = context(request)
    return _model_card(ctx, ctx.resolve_model(model))


@api.post("/v1/load_lora_adapter", response_model=LoraAdapterResponse)
async def load_lora_adapter(body: LoadLoraAdapterRequest, request: Request) -> LoraAdapterResponse:
    """Admin key only (server/middleware.py); off unless --lora-admin-key."""
    adapter, seconds = await request.app.state.lora_admin.load(body.lora_name, body.lora_path)
    parent = context(request).model_name
    return LoraAdapterResponse(
        name=adapter.name, parent=parent, status="loaded", rank=adapter.rank, load_seconds=round(seconds, 4)
    )


@api.post("/v1/unload_lora_adapter", response_model=LoraAdapterResponse)
async def unload_lora_adapter(body: UnloadLoraAdapterRequest, request: Request) -> LoraAdapterResponse:
    adapter = await request.app.state.lora_admin.unload(body.lora_name)
    return LoraAdapterResponse(
        name=adapter.name, parent=context(request).model_name, status="unloaded", rank=adapter.rank
    )


@api.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    """Like any prompt: the key's request rate (server/middleware.py) and its
    tokens per minute; tools count toward the prompt's size and the schema
    limits, and long work runs off the event loop."""
    ctx = context(request)
    ctx.resolve_model(body.model)
    caller: Caller = request.state.caller
    if body.messages is not None:
        chars = sum(len(m.text()) for m in body.messages) + tool_chars(body.tools, request.app.state.chat.grammar)
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
    """At most a context's worth of tokens, decoded off the event loop when long."""
    ctx = context(request)
    ctx.resolve_model(body.model)
    check_detokenize(body.tokens, ctx.engine.info.max_model_len)
    check_token_ids(body.tokens, ctx.engine.info.vocab_size, "tokens")
    text = await ctx.pool.run(ctx.tokenizer.decode, body.tokens, chars=len(body.tokens), param="tokens")
    caller: Caller = request.state.caller
    if caller.limits is not None:
        caller.limits.charge_tokens(len(body.tokens))
    return DetokenizeResponse(prompt=text)


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
    # Per-key series for a caller with a valid key (or when keys are off: all anonymous).
    with_keys = getattr(request.state, "caller", None) is not None or not ctx.keys.enabled
    return Response(ctx.metrics.render(with_keys), media_type="text/plain; version=0.0.4; charset=utf-8")
