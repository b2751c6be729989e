"""One request, timed honestly: TTFT from sending to the first content token
(empty chunks skipped), ITL between content chunks, E2E to the last byte."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from lemur.loadtest.dataset import BenchPrompt


@dataclass(frozen=True)
class Target:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None = None
    endpoint: str = "chat"  # "chat" | "completions"
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
    body: dict[str, Any] = {"model": t.model, "max_tokens": p.max_tokens, "temperature": t.temperature,
                            "stream": t.stream}  # fmt: skip
    if t.endpoint == "chat":
        body["messages"] = p.for_chat()
    else:
        body["prompt"] = p.for_completions()
    if t.stream:
        body["stream_options"] = {"include_usage": True}
    if t.ignore_eos:
        body["ignore_eos"] = True
    return {**body, **t.extra_body}


def _content(chunk: dict[str, Any], endpoint: str) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    if endpoint == "chat":
        return (choices[0].get("delta") or {}).get("content") or ""
    return choices[0].get("text") or ""


def _error(status: int, raw: bytes) -> str:
    try:
        code = json.loads(raw)["error"].get("code") or json.loads(raw)["error"].get("type")
    except (ValueError, KeyError, TypeError, AttributeError):
        code = None
    return f"{status}:{code}" if code else str(status)


async def send(http: aiohttp.ClientSession, t: Target, p: BenchPrompt, t0: float) -> RequestResult:
    """aiohttp, reading raw bytes and splitting SSE events by hand: the client's
    own cost per chunk must stay far below the server's."""
    path = "/chat/completions" if t.endpoint == "chat" else "/completions"
    headers = {"Authorization": f"Bearer {t.api_key}"} if t.api_key else {}
    start = time.perf_counter()
    res = RequestResult(start=start - t0, end=start - t0, status=0, input_tokens=p.input_tokens)
    chunks = 0
    try:
        async with http.post(t.base_url.rstrip("/") + path, json=_body(t, p), headers=headers) as r:
            res.status = r.status
            if r.status != 200:
                res.error = _error(r.status, await r.read())
            elif not t.stream:
                data = json.loads(await r.read())
                res.ttft = time.perf_counter() - start
                res.output_tokens = int((data.get("usage") or {}).get("completion_tokens", 0))
            else:
                last = None
                buffer = b""
                async for raw in r.content.iter_any():
                    now = time.perf_counter()
                    buffer += raw
                    *events, buffer = buffer.split(b"\n\n")
                    for event in events:
                        if not event.startswith(b"data: ") or event == b"data: [DONE]":
                            continue
                        chunk = json.loads(event[6:])
                        if "error" in chunk:
                            res.error = _error(200, event[6:])
                            continue
                        if chunk.get("usage"):
                            res.output_tokens = int(chunk["usage"].get("completion_tokens", 0))
                            res.input_tokens = int(chunk["usage"].get("prompt_tokens", 0)) or res.input_tokens
                        if _content(chunk, t.endpoint):
                            if last is None:
                                res.ttft = now - start
                            else:
                                res.itl.append(now - last)
                            last = now
                            chunks += 1
                if res.output_tokens == 0:
                    res.output_tokens = chunks  # no usage from the server: one chunk per token
    except TimeoutError:
        res.error = "timeout"
    except aiohttp.ClientError as exc:
        res.error = type(exc).__name__
    res.end = time.perf_counter() - t0
    return res
