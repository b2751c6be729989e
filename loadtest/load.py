"""How requests are launched: a fixed concurrency, a Poisson (gamma) request
rate, or a linear ramp of rates; bounded by a request count or a duration."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lemur.loadtest.client import RequestResult
from lemur.loadtest.dataset import BenchPrompt


@dataclass(frozen=True)
class Load:
    concurrency: int | None = None  # closed loop: this many requests in flight
    rate: float | None = None  # open loop: requests per second (Poisson when burstiness = 1)
    burstiness: float = 1.0  # gamma shape: < 1 burstier, > 1 more regular
    ramp_to: float | None = None  # with rate: the rate rises linearly to this by the end
    num_requests: int = 100
    duration_s: float | None = None  # stop launching after this many seconds
    max_concurrency: int | None = None  # cap on requests in flight for open-loop loads
    seed: int = 0


Send = Callable[[BenchPrompt], Awaitable[RequestResult]]


async def run_load(load: Load, prompts: list[BenchPrompt], send: Send, done: Callable[[RequestResult], None]) -> None:
    start = time.perf_counter()

    def time_left() -> bool:
        return load.duration_s is None or time.perf_counter() - start < load.duration_s

    def prompt(i: int) -> BenchPrompt:
        return prompts[i % len(prompts)]

    if load.rate is None:
        counter = iter(range(load.num_requests))

        async def worker() -> None:
            for i in counter:
                if not time_left():
                    return
                done(await send(prompt(i)))

        await asyncio.gather(*(worker() for _ in range(load.concurrency or 1)))
        return

    rng = random.Random(load.seed)
    gate = asyncio.Semaphore(load.max_concurrency) if load.max_concurrency else None
    tasks: list[asyncio.Task[None]] = []

    async def one(p: BenchPrompt) -> None:
        if gate is None:
            done(await send(p))
            return
        async with gate:
            done(await send(p))

    for i in range(load.num_requests):
        if not time_left():
            break
        tasks.append(asyncio.create_task(one(prompt(i))))
        rate = load.rate
        if load.ramp_to is not None:
            rate += (load.ramp_to - load.rate) * (i + 1) / load.num_requests
        # Gamma inter-arrival times with mean 1/rate; shape 1 is a Poisson process.
        await asyncio.sleep(rng.gammavariate(load.burstiness, 1.0 / (rate * load.burstiness)))
    await asyncio.gather(*tasks)
