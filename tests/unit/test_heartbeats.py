"""Heartbeats while a stream's first item is awaited (Anthropic's `ping`
during a long prefill): when they come, and that closing the stream while
waiting still closes its source (which aborts the engine request)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from lemur.server.serving.generation import HEARTBEAT, with_heartbeats


class Source:
    """A stream whose items come after the given delays; records how it ended."""

    def __init__(self, delays: list[float], fail_at: int | None = None) -> None:
        self.delays, self.fail_at = delays, fail_at
        self.ended: str | None = None

    async def items(self) -> AsyncGenerator[int, None]:
        try:
            for i, delay in enumerate(self.delays):
                await asyncio.sleep(delay)
                if i == self.fail_at:
                    raise ValueError("engine failed")
                yield i
            self.ended = "done"
        except asyncio.CancelledError:
            self.ended = "cancelled"
            raise
        except GeneratorExit:
            self.ended = "closed"
            raise


async def _collect(source: Source, every: float) -> list[object]:
    return [item async for item in with_heartbeats(source.items(), every)]


def test_heartbeats_come_only_before_the_first_item() -> None:
    source = Source([0.35, 0.35, 0.0])  # the later waits are as long, but after the first item
    got = asyncio.run(_collect(source, 0.1))
    beats = got.index(0)
    assert beats >= 1 and all(item is HEARTBEAT for item in got[:beats])
    assert got[beats:] == [0, 1, 2] and source.ended == "done"


def test_a_fast_first_item_has_no_heartbeat() -> None:
    assert asyncio.run(_collect(Source([0.0, 0.0]), 5.0)) == [0, 1]


def test_an_empty_stream_ends_without_heartbeats() -> None:
    assert asyncio.run(_collect(Source([]), 5.0)) == []


def test_an_error_before_the_first_item_is_raised_after_the_heartbeats() -> None:
    source = Source([0.25], fail_at=0)
    seen: list[object] = []

    async def run() -> None:
        async for item in with_heartbeats(source.items(), 0.05):
            seen.append(item)

    with pytest.raises(ValueError, match="engine failed"):
        asyncio.run(run())
    assert seen and all(item is HEARTBEAT for item in seen)


def test_closing_while_waiting_cancels_the_source() -> None:
    source = Source([30.0])

    async def run() -> None:
        stream = with_heartbeats(source.items(), 0.01)
        assert await anext(stream) is HEARTBEAT
        await stream.aclose()  # the client left during the prefill

    asyncio.run(run())
    assert source.ended == "cancelled"


def test_closing_after_the_first_item_closes_the_source() -> None:
    source = Source([0.0, 30.0])

    async def run() -> None:
        stream = with_heartbeats(source.items(), 5.0)
        assert await anext(stream) == 0
        await stream.aclose()

    asyncio.run(run())
    assert source.ended == "closed"
