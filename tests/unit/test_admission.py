"""Admission control logic (pure asyncio, no engine)."""

from __future__ import annotations

import asyncio

import pytest

from lemur.server.admission import AdmissionConfig, AdmissionController, RateLimited, ServerOverloaded


def run(coro):
    return asyncio.run(coro)


def test_concurrency_queue_and_refusal() -> None:
    async def main() -> None:
        ac = AdmissionController(AdmissionConfig(max_concurrent=2, max_queued=1, queue_timeout=5))
        a, b = await ac.acquire(), await ac.acquire()
        assert ac.running == 2
        waiter = asyncio.create_task(ac.acquire())
        await asyncio.sleep(0)
        assert ac.waiting == 1
        with pytest.raises(RateLimited) as exc:
            await ac.acquire()  # queue full: refused at once
        assert exc.value.status_code == 429 and exc.value.headers()["Retry-After"] == "1"
        a.release()
        a.release()  # idempotent
        c = await asyncio.wait_for(waiter, 1)  # the slot went straight to the waiter
        assert ac.running == 2 and ac.waiting == 0
        b.release()
        c.release()
        assert ac.running == 0
        assert await ac.wait_idle(0.1)

    run(main())


def test_queue_timeout_is_429() -> None:
    async def main() -> None:
        ac = AdmissionController(AdmissionConfig(max_concurrent=1, max_queued=4, queue_timeout=0.05))
        held = await ac.acquire()
        with pytest.raises(RateLimited):
            await ac.acquire()
        assert ac.waiting == 0
        held.release()
        assert ac.running == 0

    run(main())


def test_cancelled_waiter_frees_its_place() -> None:
    async def main() -> None:
        ac = AdmissionController(AdmissionConfig(max_concurrent=1, max_queued=4, queue_timeout=5))
        held = await ac.acquire()
        waiter = asyncio.create_task(ac.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert ac.waiting == 0
        held.release()
        assert ac.running == 0

    run(main())


def test_draining_refuses_new_and_queued() -> None:
    async def main() -> None:
        ac = AdmissionController(AdmissionConfig(max_concurrent=1, max_queued=4, queue_timeout=5))
        held = await ac.acquire()
        waiter = asyncio.create_task(ac.acquire())
        await asyncio.sleep(0)
        ac.start_draining()
        with pytest.raises(ServerOverloaded):
            await waiter
        with pytest.raises(ServerOverloaded) as exc:
            await ac.acquire()
        assert exc.value.status_code == 503 and exc.value.code == "server_overloaded"
        assert not await ac.wait_idle(0.05)
        held.release()
        assert await ac.wait_idle(0.05)

    run(main())


def test_admission_weighs_requests_by_sequences() -> None:
    async def scenario() -> None:
        ac = AdmissionController(AdmissionConfig(max_concurrent=4, max_queued=4, queue_timeout=5))
        big = await ac.acquire(3)  # e.g. n=3
        assert ac.running == 3
        head = asyncio.create_task(ac.acquire(4))  # waits for the whole room
        await asyncio.sleep(0)
        small = asyncio.create_task(ac.acquire(1))  # would fit now, but must not overtake the head
        await asyncio.sleep(0.05)
        assert not head.done() and not small.done() and ac.waiting == 2
        big.release()
        head_permit = await asyncio.wait_for(head, 1)
        assert ac.running == 4 and not small.done()
        head_permit.release()
        (await asyncio.wait_for(small, 1)).release()
        assert ac.running == 0
        # Heavier than the whole server: capped, so it runs alone rather than never.
        huge = await ac.acquire(100)
        assert huge.weight == 4 and ac.running == 4
        huge.release()

    asyncio.run(scenario())


def test_a_cancelled_big_waiter_unblocks_the_ones_behind_it() -> None:
    async def scenario() -> None:
        ac = AdmissionController(AdmissionConfig(max_concurrent=4, max_queued=4, queue_timeout=5))
        held = await ac.acquire(3)
        head = asyncio.create_task(ac.acquire(4))
        await asyncio.sleep(0)
        small = asyncio.create_task(ac.acquire(1))
        await asyncio.sleep(0.05)
        head.cancel()  # its client left
        permit = await asyncio.wait_for(small, 1)
        assert ac.running == 4 and ac.waiting == 0
        permit.release()
        held.release()
        assert ac.running == 0

    asyncio.run(scenario())
