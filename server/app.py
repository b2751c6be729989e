"""The FastAPI application: lifecycle, middleware, error handlers, routes."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

from lemur import __version__
from lemur.server import playground
from lemur.server.admission import AdmissionConfig, AdmissionController
from lemur.server.auth import KeyStore
from lemur.server.chat_template import ChatTemplate, select_template
from lemur.server.config import GatewayConfig
from lemur.server.engine import Engine, EngineRequest, SamplingSpec
from lemur.server.errors import install_error_handlers
from lemur.server.lifecycle import watch_engine, watch_nodes
from lemur.server.lora_registry import AdapterRegistry
from lemur.server.metrics import Metrics
from lemur.server.middleware import Authenticate, BodySizeLimit, RequestMiddleware
from lemur.server.ratelimit import RateLimiter
from lemur.server.responses_store import ResponseStore, open_store
from lemur.server.routes import api, probes
from lemur.server.serving.chat import ChatService
from lemur.server.serving.completions import CompletionService
from lemur.server.serving.context import Account, ServingContext, new_request_id
from lemur.server.serving.lora_admin import AdapterService
from lemur.server.serving.messages import MessagesService
from lemur.server.serving.pipeline import ClientDisconnected
from lemur.server.serving.prepare_pool import PreparePool
from lemur.server.serving.respond import collect
from lemur.server.serving.responses_service import ResponsesService, StoreLimits
from lemur.server.tokenizer import Tokenizer

logger = logging.getLogger("lemur.app")
# Threads that render and tokenize prompts (HF tokenizers release the GIL while they encode).
PREPARE_WORKERS = 4

EngineFactory = Callable[[], Engine]


async def warm_up(ctx: ServingContext) -> None:
    """Serve one tiny request through the engine; then the server is ready."""
    t0 = time.perf_counter()
    prompt = (ctx.tokenizer.special.bos_id or 0,)
    request = EngineRequest(new_request_id("warmup"), prompt, SamplingSpec(max_tokens=1))
    await collect(ctx, (request,), Account("warmup"))
    ctx.state.ready = True
    logger.info("engine warm-up served in %.2fs; ready", time.perf_counter() - t0)


def build_context(config: GatewayConfig, engine: Engine, tokenizer: Tokenizer) -> ServingContext:
    source_template, source = select_template(config.chat_template, tokenizer.chat_template)
    special = tokenizer.special
    template = ChatTemplate.build(source_template, source, special.bos, special.eos, tokenizer.control_texts)
    names = config.served_model_names or (engine.info.name,)
    config = GatewayConfig(**{**config.__dict__, "served_model_names": names})
    info = engine.info
    logger.info("serving %s as %s in %s; chat template: %s", info.path, ", ".join(names), info.dtype, source)
    admission = AdmissionController(
        AdmissionConfig(config.max_concurrent_requests, config.max_queued_requests, config.queue_timeout)
    )
    keys = KeyStore.from_sources(config.api_key, config.api_keys_file)
    limiter = RateLimiter(config.rate_limit_rpm, config.rate_limit_tpm)
    metrics = Metrics(names[0], config.metrics_max_age)
    metrics.watch_queue(lambda: admission.waiting)
    pool = PreparePool(PREPARE_WORKERS, config.max_queued_requests, engine.info.max_model_len, config.grammar_timeout)
    adapters = AdapterRegistry(names, info.shapes, info.lora)
    if info.lora is not None:
        logger.info("LoRA adapters: up to %d per batch, rank up to %d", info.lora.max_loras, info.lora.max_rank)
    return ServingContext(config, engine, tokenizer, template, metrics, admission, keys, limiter, pool, adapters)


def create_app(
    config: GatewayConfig,
    engine_factory: EngineFactory,
    engine_version: str = "unknown",
    on_engine_dead: Callable[[], None] | None = None,
) -> FastAPI:
    """`on_engine_dead` is called once the engine has died and the requests in
    flight have failed (the CLI stops the server with exit code 1)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(config.responses_store, config.state_dir, config.responses_ttl)
        if store is not None:
            await store.open()  # first: a database that cannot be reached stops the start at once
        try:
            async with _serving(app, store):
                yield
        finally:
            if store is not None:
                await store.close()

    @asynccontextmanager
    async def _serving(app: FastAPI, store: ResponseStore | None) -> AsyncIterator[None]:
        engine = engine_factory()
        tokenizer = Tokenizer.load(engine.info.tokenizer)
        ctx = build_context(config, engine, tokenizer)
        if config.metrics_port is not None:
            ctx.metrics.serve_apart(config.host, config.metrics_port)
            logger.info("/metrics on %s:%d, not on the API port", config.host, config.metrics_port)
        app.state.ctx = ctx
        app.state.chat = ChatService(ctx)
        app.state.completions = CompletionService(ctx)
        limits = StoreLimits(config.responses_max_chain, int(config.responses_max_mb_per_key * 1024 * 1024))
        app.state.responses = ResponsesService(app.state.chat, store, limits)
        app.state.messages = MessagesService(app.state.chat)
        app.state.lora_admin = AdapterService(ctx)
        try:
            await app.state.lora_admin.load_configured()
        except BaseException:
            ctx.pool.shutdown()
            ctx.lora_registry.close()
            await engine.shutdown()
            raise
        # Everything loaded so far (vLLM, torch, tokenizer: hundreds of thousands
        # of objects) lives as long as the process: out of the collector's way,
        # so that full collections, which requests trigger, do not scan it.
        gc.collect()
        gc.freeze()
        warm = asyncio.create_task(warm_up(ctx)) if config.warmup else None
        if warm is None:
            ctx.state.ready = True
        watchdog = asyncio.create_task(watch_engine(ctx, on_engine_dead or (lambda: None)))
        nodes = asyncio.create_task(watch_nodes(ctx)) if engine.info.nodes > 1 else None
        try:
            yield
        finally:
            for task in (warm, watchdog, nodes):
                if task is not None:
                    task.cancel()
            ctx.pool.shutdown()
            ctx.lora_registry.close()
            await engine.shutdown()
            gc.unfreeze()  # let everything be finalized at exit as usual

    # The schema is served by our own route, behind the API keys (no open docs pages).
    app = FastAPI(
        title="Lemur Serve", version=__version__, lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None
    )
    app.state.engine_version = engine_version
    install_error_handlers(app)

    @app.exception_handler(ClientDisconnected)
    async def _disconnected(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nobody is listening; for logs and metrics

    app.include_router(api)
    app.include_router(probes)
    if config.playground:
        app.include_router(playground.router)
    # Added innermost first: RequestMiddleware -> Authenticate -> BodySizeLimit -> routes.
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(Authenticate)
    app.add_middleware(RequestMiddleware)
    return app
