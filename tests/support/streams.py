"""SSE helpers for the e2e tests: a SIGTERM that lands while streams are open."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import dataclass

import httpx

from tests.conftest import LiveServer


@dataclass(frozen=True)
class DrainRun:
    streams: list[list[str]]  # each stream's "data: " lines, [DONE] included
    ready: int  # /ready right after the signal
    refused: int  # a new request during the drain
    drained_after: float  # seconds from the signal until every stream ended


def finish_reasons(lines: list[str]) -> list[str]:
    chunks = [json.loads(x[6:]) for x in lines[:-1]]
    return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]


def sigterm_while_streaming(server: LiveServer, body: dict, streams: int, lines_first: int = 1) -> DrainRun:
    """Open `streams` chat streams; once each has `lines_first` events, send
    SIGTERM, probe /ready and a new request, then read every stream to its end."""
    url = server.url("/v1/chat/completions")

    async def scenario() -> DrainRun:
        limits = httpx.Limits(max_connections=streams + 10)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            started = asyncio.Semaphore(0)

            async def stream() -> list[str]:
                lines: list[str] = []
                async with client.stream("POST", url, json=body) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            lines.append(line)
                            if len(lines) == lines_first:
                                started.release()
                return lines

            tasks = [asyncio.create_task(stream()) for _ in range(streams)]
            for _ in tasks:
                await asyncio.wait_for(started.acquire(), 60)
            t0 = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            ready = (await client.get(server.url("/ready"))).status_code
            refused = (await client.post(url, json={**body, "stream": False, "max_tokens": 2})).status_code
            results = await asyncio.gather(*tasks)
            return DrainRun(results, ready, refused, time.monotonic() - t0)

    return asyncio.run(scenario())
