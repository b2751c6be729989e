"""Adapters at start-up and at run time: check, load into the engine, list.

A load checks the files off the event loop (server/lora_registry.py), loads them
into the engine, and only then makes the name servable, so no request can
reach an adapter that is not there. An unload makes the name unservable
first (a request still queued for it gets 404 when it reaches the engine),
waits for the requests running with it, then drops it from the engine. One
lock orders loads and unloads.
"""

from __future__ import annotations

import asyncio
import logging
import time

from lemur.server.engine import EngineRejectedRequest
from lemur.server.errors import InvalidRequest
from lemur.server.lora_registry import Adapter
from lemur.server.serving.context import ServingContext

logger = logging.getLogger("lemur.adapters")
# How long an unload waits for the requests running with the adapter.
UNLOAD_WAIT_S = 60.0


class AdapterService:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx
        self._lock = asyncio.Lock()

    async def load(self, name: str, path: str) -> tuple[Adapter, float]:
        """Check, load and register an adapter; (adapter, seconds it took)."""
        ctx = self.ctx
        async with self._lock:
            t0 = time.perf_counter()
            adapter = await asyncio.to_thread(ctx.lora_registry.check, name, path)
            try:
                await ctx.engine.add_adapter(adapter.ref)
            except EngineRejectedRequest as exc:
                ctx.lora_registry.discard(adapter)
                raise InvalidRequest(str(exc), param="lora_path", code="invalid_adapter") from exc
            ctx.lora_registry.register(adapter)
            seconds = time.perf_counter() - t0
        ctx.metrics.adapter_load_seconds.observe(seconds)
        ctx.metrics.adapters_loaded.set(len(ctx.lora_registry.all()))
        logger.info(
            "adapter %s loaded from %s (rank %d, trained on %s) in %.3fs",
            name,
            adapter.source,
            adapter.rank,
            adapter.base or "an unnamed base",
            seconds,
            extra={"adapter": name},
        )
        return adapter, seconds

    async def unload(self, name: str) -> Adapter:
        """New requests for `name` get 404 at once; the engine drops the
        adapter once the requests running with it have finished (vLLM would
        reload it for them), or after UNLOAD_WAIT_S; then its private copy
        goes."""
        ctx = self.ctx
        async with self._lock:
            adapter = ctx.lora_registry.remove(name)  # 404 when unknown
            try:
                async with asyncio.timeout(UNLOAD_WAIT_S):
                    await ctx.lora_registry.wait_unused(adapter.ref)
                in_use = False
            except TimeoutError:
                logger.warning("adapter %s unloaded with requests still using it", name, extra={"adapter": name})
                in_use = True
            await ctx.engine.remove_adapter(adapter.ref)
            if not in_use:  # else the engine may load it again for them: the copy stays until exit
                ctx.lora_registry.discard(adapter)
        ctx.metrics.adapters_loaded.set(len(ctx.lora_registry.all()))
        logger.info("adapter %s unloaded", name, extra={"adapter": name})
        return adapter

    async def load_configured(self) -> None:
        """--lora-modules, at start-up: a bad one stops the server with its reason."""
        for name, path in self.ctx.config.lora_modules:
            try:
                await self.load(name, path)
            except InvalidRequest as exc:
                raise AdapterStartupError(f"--lora-modules {name}={path}: {exc.message}") from None


class AdapterStartupError(RuntimeError):
    """An adapter given on the command line cannot be served."""
