"""Admission control: bounded concurrency, a bounded queue, and drain.

At most `max_concurrent` generation requests run; up to `max_queued` more wait
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

from server.errors import APIError


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
    """One admitted request; release exactly once (idempotent)."""

    def __init__(self, controller: AdmissionController) -> None:
        self._controller = controller
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._controller._release()


class AdmissionController:
    def __init__(self, config: AdmissionConfig) -> None:
        self.config = config
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> Permit:
        if self.draining:
            raise ServerOverloaded("the server is shutting down; retry on another replica")
        if self.running < self.config.max_concurrent and not self._waiters:
            self.running += 1
            self._idle.clear()
            return Permit(self)
        if len(self._waiters) >= self.config.max_queued:
            raise RateLimited("too many requests in flight; retry later", retry_after=1.0)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.config.queue_timeout)
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                return Permit(self)  # granted at the last moment: keep it
            fut.cancel()
            self._forget(fut)
            raise RateLimited("the request waited too long for a slot; retry later", retry_after=2.0) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # granted, but the client is gone: pass it on
            else:
                fut.cancel()
                self._forget(fut)
            raise
        return Permit(self)

    def _forget(self, fut: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(fut)
        except ValueError:
            pass

    def _release(self) -> None:
        # Hand the slot straight to the oldest live waiter, if any.
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.running -= 1
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
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(ServerOverloaded("the server is shutting down; retry on another replica"))
