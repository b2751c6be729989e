"""Per-request bookkeeping around every HTTP request: a request id (taken from
X-Request-ID or made up, and returned), the access log line, and the request
counters by route, status and API key name."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.logs import request_id_var

logger = logging.getLogger("lemur.access")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = sent if _SANE_ID.match(sent) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            caller = scope.get("state", {}).get("caller")
            key = caller.key_name if caller is not None else "none"
            ctx = getattr(scope["app"].state, "ctx", None)
            if ctx is not None:
                ctx.metrics.http_requests.labels(route, scope["method"], str(status)).inc()
                ctx.metrics.key_requests.labels(key, str(status)).inc()
            logger.info(
                "%s %s %d", scope["method"], scope["path"], status,
                extra={"status": status, "route": route, "key": key,
                       "duration_ms": round((time.perf_counter() - start) * 1000, 2)},
            )  # fmt: skip
            request_id_var.reset(token)
