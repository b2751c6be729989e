"""Server-sent events: the stream object, and the framing of OpenAI's chunk
streams (chat and completions: `data: {chunk}` events ending in `[DONE]`)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_json

from lemur.server.engine import EngineOutput
from lemur.server.errors import APIError
from lemur.server.protocol.common import Usage

SSE_DONE = "data: [DONE]\n\n"


@dataclass(frozen=True)
class EventStream:
    """SSE events and the engine stream they are made from. Closing it closes
    both, so the engine request is aborted even if the events never started."""

    events: AsyncGenerator[str, None]
    source: AsyncGenerator[Any, None]

    async def aclose(self) -> None:
        await self.events.aclose()
        await self.source.aclose()


def sse(payload: BaseModel) -> str:
    """One `data: {json}` event; null fields (`finish_reason` of a middle chunk)
    are sent as null, as OpenAI does."""
    return f"data: {payload.model_dump_json()}\n\n"


def typed_event(kind: str, **fields: Any) -> str:
    """One typed event, as the Responses and Messages APIs send them:
    `event: kind` and `data: {"type": kind, ...fields}`, models among the
    fields included (pydantic-core's encoder: a stream sends one per token,
    and it takes a quarter of json.dumps' time)."""
    return f"event: {kind}\ndata: {to_json({'type': kind, **fields}).decode()}\n\n"


def sse_error(exc: APIError) -> str:
    """An error inside an already-started stream (the status line is gone)."""
    return f"data: {json.dumps(exc.body())}\n\n"


class ChunkStream:
    """The stream half of an Answer (server/serving/respond.py) for the APIs
    that stream chunk objects: an endpoint gives its chunks, this frames them."""

    include_usage: bool = False
    heartbeat: str | None = None

    def opening_chunks(self) -> list[BaseModel]:
        """Chunks that go out with the first content (chat's role chunks)."""
        return []

    def chunk(self, prompt_index: int, out: EngineOutput) -> BaseModel | None:
        """The chunk for one engine output; None when it carries nothing to show."""
        raise NotImplementedError

    def usage_chunk(self, usage: Usage) -> BaseModel:
        raise NotImplementedError

    def opening(self) -> str:
        return "".join(sse(c) for c in self.opening_chunks())

    def events(self, prompt_index: int, out: EngineOutput) -> str:
        chunk = self.chunk(prompt_index, out)
        return sse(chunk) if chunk is not None else ""

    async def closing(self, usage: Usage) -> str:
        return (sse(self.usage_chunk(usage)) if self.include_usage else "") + SSE_DONE

    def failed(self, exc: APIError) -> str:
        return sse_error(exc) + SSE_DONE

    async def finished(self, response: BaseModel) -> None:
        pass
