"""Server-sent events framing for OpenAI streams."""

from __future__ import annotations

import json

from pydantic import BaseModel

from server.errors import APIError

SSE_DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel) -> str:
    """One `data: {json}` event; null fields (`finish_reason` of a middle chunk)
    are sent as null, as OpenAI does."""
    return f"data: {payload.model_dump_json()}\n\n"


def sse_error(exc: APIError) -> str:
    """An error inside an already-started stream (the status line is gone)."""
    return f"data: {json.dumps(exc.body())}\n\n"
