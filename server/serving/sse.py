"""Server-sent events framing for OpenAI streams."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from lemur.server.errors import APIError

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


def sse_error(exc: APIError) -> str:
    """An error inside an already-started stream (the status line is gone)."""
    return f"data: {json.dumps(exc.body())}\n\n"
