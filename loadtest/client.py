"""One request, timed honestly: TTFT from sending to the first content token
(empty chunks skipped), ITL between content chunks, E2E to the last byte."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from lemur.loadtest.dataset import BenchPrompt
from lemur.loadtest.wire import WIRES, Wire


@dataclass(frozen=True)
class Target:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None = None
    endpoint: str = "chat"  # a key of lemur.loadtest.wire.WIRES
    stream: bool = True
    ignore_eos: bool = False
    temperature: float = 0.0
    # Fields added to every request body (e.g. a response_format or tools).
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestResult:
    start: float  # seconds since the run began
    end: float
    status: int  # HTTP status; 0 for a transport failure
    error: str | None = None  # "429:rate_limit_exceeded", "timeout", ...
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    input_tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def _body(t: Target, p: BenchPrompt) -> dict[str, Any]:
    body: dict[str, Any] = {"model": t.model, "temperature": t.temperature, **WIRES[t.endpoint].body(p, t.stream)}
    if t.ignore_eos:
        body["ignore_eos"] = True
    return {**body, **t.extra_body}


def _error(status: int, raw: bytes) -> str:
    try:
        error = json.loads(raw)["error"]
        code = error.get("code") or error.get("type")
    except (ValueError, KeyError, TypeError, AttributeError):
        code = None
    return f"{status}:{code}" if code else str(status)


def _data(event: bytes) -> bytes | None:
    """The data line of one SSE event (OpenAI's chunks have only that; typed
    events have an `event:` line first)."""
    for line in event.split(b"\n"):
        if line.startswith(b"data: "):
            return line[6:]
    return None


class _Stream:
    """Reads one streamed answer: timing of content events, token counts."""

    def __init__(self, wire: Wire, res: RequestResult, start: float) -> None:
        self.wire, self.res, self.start = wire, res, start
        self.last: float | None = None
        self.chunks = 0

    def feed(self, data: bytes, now: float) -> None:
        if data == b"[DONE]":
            return
        seen = self.wire.event(json.loads(data))
        if seen.error is not None:
            self.res.error = f"200:{seen.error}"
        if seen.output_tokens:
            self.res.output_tokens = seen.output_tokens
        if seen.input_tokens:
            self.res.input_tokens = seen.input_tokens
        if seen.text:
            if self.last is None:
                self.res.ttft = now - self.start
            else:
                self.res.itl.append(now - self.last)
            self.last = now
            self.chunks += 1


async def send(http: aiohttp.ClientSession, t: Target, p: BenchPrompt, t0: float) -> RequestResult:
    """aiohttp, reading raw bytes and splitting SSE events by hand: the client's
    own cost per chunk must stay far below the server's."""
    wire = WIRES[t.endpoint]
    headers = wire.auth(t.api_key) if t.api_key else {}
    start = time.perf_counter()
    res = RequestResult(start=start - t0, end=start - t0, status=0, input_tokens=p.input_tokens)
    try:
        async with http.post(t.base_url.rstrip("/") + wire.path, json=_body(t, p), headers=headers) as r:
            res.status = r.status
            if r.status != 200:
                res.error = _error(r.status, await r.read())
            elif not t.stream:
                seen = wire.whole(json.loads(await r.read()))
                res.ttft = time.perf_counter() - start
                res.output_tokens = seen.output_tokens or 0
            else:
                stream, buffer = _Stream(wire, res, start), b""
                async for raw in r.content.iter_any():
                    now = time.perf_counter()
                    *events, buffer = (buffer + raw).split(b"\n\n")
                    for event in events:
                        if (data := _data(event)) is not None:
                            stream.feed(data, now)
                if res.output_tokens == 0:
                    res.output_tokens = stream.chunks  # no usage from the server: one chunk per token
    except TimeoutError:
        res.error = "timeout"
    except aiohttp.ClientError as exc:
        res.error = type(exc).__name__
    res.end = time.perf_counter() - t0
    return res
