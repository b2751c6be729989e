"""Process lifecycle: graceful drain on SIGTERM, and exit when the engine dies.

Drain: /ready turns 503 at once and new requests get 503, requests in flight
(streams included) may finish for up to `shutdown_timeout` seconds, the rest
are aborted (their streams end with an error event, then [DONE]), and the
process exits 0. Engine death: /health and /ready turn 503, requests in flight
end with an error, and the process exits 1 so that a supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from lemur.server.config import ABORT_GRACE_S
from lemur.server.engine import EngineDeadError
from lemur.server.serving.context import ServingContext

logger = logging.getLogger("lemur.lifecycle")

ENGINE_POLL_S = 0.5
DEATH_503_S = 1.0  # after the engine died, /health answers 503 at least this long before the exit
# A model spanning nodes: how often every rank is asked whether it is alive,
# and how long it has to answer. A dead or frozen node is found within their
# sum; the process then exits 1 (watch_engine), well inside 15 s.
NODE_CHECK_S = 2.0
NODE_TIMEOUT_S = 3.0  # a healthy rank answers in milliseconds


async def drain(ctx: ServingContext, limit_s: float) -> None:
    loop = asyncio.get_running_loop()
    ctx.state.draining = True
    ctx.admission.start_draining()
    started = loop.time()
    logger.info("draining: %d sequences in flight, up to %.0fs", ctx.admission.running, limit_s)
    if not await ctx.admission.wait_idle(limit_s):
        logger.warning("drain timeout: aborting %d engine requests", len(ctx.state.inflight))
        for request_id in list(ctx.state.inflight):
            await ctx.engine.abort(request_id)
        # Aborted streams still send their error event and [DONE].
        await ctx.admission.wait_idle(ABORT_GRACE_S)
    logger.info("drained in %.2fs", loop.time() - started)


async def watch_engine(ctx: ServingContext, on_dead: Callable[[], None]) -> None:
    """Poll the engine; when it dies, refuse new work, say why it died, let the
    requests in flight fail (they see the dead engine themselves), then call
    on_dead."""
    while ctx.engine.is_alive():  # noqa: ASYNC110 - vLLM offers no event for this; poll
        await asyncio.sleep(ENGINE_POLL_S)
    ctx.state.draining = True
    ctx.admission.start_draining()
    died = asyncio.get_running_loop().time()
    try:
        await report_death(ctx)
    finally:  # whatever the report met, the process must still exit
        await ctx.admission.wait_idle(ABORT_GRACE_S)
        # Probes and load balancers see the 503s a while rather than a port
        # that is simply gone (an idle death would otherwise close it at once).
        await asyncio.sleep(max(0.0, DEATH_503_S - (asyncio.get_running_loop().time() - died)))
        on_dead()


async def watch_nodes(ctx: ServingContext) -> None:
    """Ask every node's ranks every NODE_CHECK_S, busy or idle, so that a
    node that died or froze turns /health to 503 and ends the process (the
    engine counts as dead from then on, which watch_engine acts on)."""
    while ctx.engine.is_alive():
        await asyncio.sleep(NODE_CHECK_S)
        try:
            await ctx.engine.check_nodes(NODE_TIMEOUT_S)
        except EngineDeadError:
            return


async def report_death(ctx: ServingContext) -> None:
    try:
        death = await asyncio.to_thread(ctx.engine.death_report)
    except Exception:
        logger.exception("the inference engine died; finding out why failed")
        return
    extra = {"engine_process": death.process, "engine_exitcode": death.exitcode}
    logger.error("%s; refusing requests and exiting", death.summary(), extra=extra)
    if (block := death.traceback_block()) is not None:
        logger.error(block)


def reserve_address(host: str, port: int) -> socket.socket:
    """The API's address, bound before the engine loads (minutes for a 70B
    model): a port in use fails the start at once, and no other process can
    take the port meanwhile. Bound, not listening: until uvicorn listens, once
    the app is ready, connections are refused as if nothing were there."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class GatewayServer(uvicorn.Server):
    """uvicorn, with SIGTERM/SIGINT starting a drain instead of an immediate
    stop (a second signal stops at once), and an exit code."""

    def __init__(self, config: uvicorn.Config, shutdown_timeout: float) -> None:
        super().__init__(config)
        self.shutdown_timeout = shutdown_timeout
        self.exit_code = 0
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        for sock in sockets or ():  # uvicorn announces only the addresses it bound itself
            host, port = sock.getsockname()[:2]
            logger.info("listening on http://%s:%d", f"[{host}]" if ":" in host else host, port)

    def context(self) -> ServingContext | None:
        app = self.config.loaded_app
        while app is not None and not hasattr(app, "state"):
            app = getattr(app, "app", None)
        return getattr(app.state, "ctx", None) if app is not None else None

    def stop(self, exit_code: int) -> None:
        self.exit_code = exit_code
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        ctx = self.context()
        if self._draining or ctx is None or self._loop is None:
            super().handle_exit(sig, frame)  # second signal, or nothing to drain: stop now
            return
        self._draining = True
        logger.info("received %s: starting graceful drain", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain_then_exit(ctx)))

    async def _drain_then_exit(self, ctx: ServingContext) -> None:
        await drain(ctx, self.shutdown_timeout)
        self.stop(self.exit_code)
