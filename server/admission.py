"""Admission control: bounded concurrency, a bounded queue, and drain.

At most `max_concurrent` sequences run (a request weighs n x prompts, so
one n=64 request takes as much room as 64 single ones); up to `max_queued` more wait
(FIFO) for at most `queue_timeout` seconds. Anything beyond is refused at once
with 429 `rate_limit_exceeded` and a Retry-After header, and while the server
drains every new request gets 503 `server_overloaded`. Nothing here grows
without bound: memory stays flat under any burst.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass

from lemur.server.errors import APIError


class RateLimited(APIError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class ServerOverloaded(APIError):
    status_code = 503
    type = "server_error"
    code = "server_overloaded"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


@dataclass(frozen=True)
class AdmissionConfig:
    max_concurrent: int = 256
    max_queued: int = 1024
    queue_timeout: float = 30.0


class Permit:
    """One admitted request holding `weight` sequences; release exactly once (idempotent)."""

    def __init__(self, controller: AdmissionController, weight: int) -> None:
        self._controller = controller
        self.weight = weight
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._controller._release(self.weight)


class AdmissionController:
    def __init__(self, config: AdmissionConfig) -> None:
        self.config = config
        self.running = 0  # sequences
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _fits(self, weight: int) -> bool:
        return self.running + weight <= self.config.max_concurrent

    async def acquire(self, weight: int = 1) -> Permit:
        """Admit a request of `weight` sequences (capped at max_concurrent, so
        the largest allowed request can always run, alone if need be)."""
        weight = max(1, min(weight, self.config.max_concurrent))
        if self.draining:
            raise ServerOverloaded("the server is shutting down; retry on another replica")
        if not self._waiters and self._fits(weight):
            self._take(weight)
            return Permit(self, weight)
        if len(self._waiters) >= self.config.max_queued:
            raise RateLimited("too many requests in flight; retry later", retry_after=1.0)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((weight, fut))
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.config.queue_timeout)
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                return Permit(self, weight)  # granted at the last moment: keep it
            self._forget(fut)
            raise RateLimited("the request waited too long for a slot; retry later", retry_after=2.0) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(weight)  # granted, but the client is gone: pass it on
            else:
                self._forget(fut)
            raise
        return Permit(self, weight)

    def _take(self, weight: int) -> None:
        self.running += weight
        self._idle.clear()

    def _forget(self, fut: asyncio.Future[None]) -> None:
        fut.cancel()
        self._waiters = deque(w for w in self._waiters if w[1] is not fut)
        self._grant()  # a big request that left the head may unblock smaller ones

    def _grant(self) -> None:
        """Hand freed room to the waiters in FIFO order, as far as it goes; the
        head waits for enough room rather than being overtaken (no starvation)."""
        while self._waiters:
            weight, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if not self._fits(weight):
                return
            self._waiters.popleft()
            self._take(weight)
            fut.set_result(None)

    def _release(self, weight: int) -> None:
        self.running -= weight
        self._grant()
        if self.running == 0:
            self._idle.set()

    async def wait_idle(self, limit_s: float) -> bool:
        """Wait until no admitted request is left; False if limit_s passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), limit_s)
        except TimeoutError:
            return False
        return True

    def start_draining(self) -> None:
        self.draining = True
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(ServerOverloaded("the server is shutting down; retry on another replica"))
