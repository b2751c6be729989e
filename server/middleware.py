"""The ASGI layers in front of the routes, cheapest check first:

1. `RequestMiddleware`: a request id (taken from X-Request-ID or made up, and
   returned), the access log line, and the request counters by route, status
   and API key name;
2. `Authenticate`: the API key, from the headers alone, before any byte of
   the body is read (keyless garbage is a 401, not a 400), and the key's
   requests-per-minute on the routes that do work (a 429 costs no parsing);
   the adapter admin routes take the admin key instead, and no API key;
3. `BodySizeLimit`: 413 beyond --max-body-bytes.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lemur.server.auth import ANONYMOUS, digest
from lemur.server.errors import APIError, AuthenticationFailed, NotFound, RequestTooLarge
from lemur.server.logs import request_id_var
from lemur.server.playground import is_page_path
from lemur.server.serving.context import Caller, ServingContext

logger = logging.getLogger("lemur.access")
QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})  # logged at DEBUG when they succeed
_SANE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = sent if _SANE_ID.match(sent) else os.urandom(16).hex()
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
            state = scope.get("state", {})
            caller, model = state.get("caller"), state.get("model")
            key = caller.key_name if caller is not None else "none"
            ctx = getattr(scope["app"].state, "ctx", None)
            if ctx is not None:
                metrics = ctx.metrics
                metrics.child(metrics.http_requests, route, scope["method"], str(status)).inc()
                metrics.child(metrics.key_requests, key, str(status)).inc()
            # A picker's scrapes (20 a second) and the kubelet's probes that succeed
            # are DEBUG lines: at INFO they would bury the log (and cost a scrape
            # as much CPU again). A failing probe is an INFO line like any other.
            level = logging.DEBUG if status < 400 and route in QUIET_ROUTES else logging.INFO
            if logger.isEnabledFor(level):
                duration_ms = round((time.perf_counter() - start) * 1000, 2)
                extra = {"status": status, "route": route, "key": key, "duration_ms": duration_ms}
                if model is not None:
                    extra["model"] = model
                logger.log(level, "%s %s %d", scope["method"], scope["path"], status, extra=extra)
            request_id_var.reset(token)


# Open to everyone: probes (and /metrics unless --metrics-require-key), and the
# playground's static page (it asks for a key itself).
OPEN_PATHS = frozenset({"/health", "/ready"})


# Routes that tokenize or generate: each call counts against the key's requests per minute.
RATED_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/tokenize",
        "/detokenize",
    }
)
# Loading and unloading adapters: the admin key only (--lora-admin-key), never a user key.
ADMIN_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})
ADMIN = "admin"


def authenticate_admin(ctx: ServingContext, authorization: str) -> Caller:
    admin_key = ctx.config.lora_admin_key
    if admin_key is None:
        raise NotFound("loading adapters at run time is off on this server (start it with --lora-admin-key)")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("This route needs the adapter admin key: 'Authorization: Bearer <admin key>'.")
    if not hmac.compare_digest(digest(token.strip()), digest(admin_key)):
        raise AuthenticationFailed("Incorrect admin key provided (API keys do not work here).")
    return Caller(ADMIN)


def authenticate(ctx: ServingContext, authorization: str) -> Caller:
    """The caller behind an Authorization header, or AuthenticationFailed."""
    if not ctx.keys.enabled:
        return Caller(ANONYMOUS.name, ctx.limiter.for_key(ANONYMOUS))
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if not token:
        raise AuthenticationFailed("Missing API key: send it as 'Authorization: Bearer <key>' (or 'x-api-key').")
    # Constant-time comparison; the key itself never appears in any message.
    key = ctx.keys.authenticate(token) if scheme.lower() == "bearer" else None
    if key is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    return Caller(key.name, ctx.limiter.for_key(key))


async def send_error(send: Send, exc: APIError, path: str, close: bool = False) -> None:
    """The error in the envelope of the API `path` belongs to; `close`: and close the connection."""
    body = json.dumps(exc.body_for(path)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    headers += [(k.lower().encode(), v.encode()) for k, v in (exc.headers() or {}).items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _authorization(scope: Scope) -> str:
    """The Authorization header; else Anthropic's `x-api-key` (its SDKs and
    Claude Code send the key so), as a bearer token."""
    headers = dict(scope.get("headers", ()))
    if b"authorization" in headers:
        return headers[b"authorization"].decode("latin-1")
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return f"Bearer {key}" if key else ""


class Authenticate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx: ServingContext | None = getattr(scope["app"].state, "ctx", None) if scope["type"] == "http" else None
        path = scope.get("path", "")
        open_path = path in OPEN_PATHS or (ctx is not None and ctx.config.playground and is_page_path(path))
        authorization = _authorization(scope)
        # An open /metrics shows the per-key series only to a caller whose key checks out.
        open_metrics = path == "/metrics" and ctx is not None and not ctx.config.metrics_require_key
        if ctx is None or open_path or (open_metrics and not authorization):
            await self.app(scope, receive, send)
            return
        check = authenticate_admin if path in ADMIN_PATHS else authenticate
        try:
            caller = check(ctx, authorization)
            scope.setdefault("state", {})["caller"] = caller
            if path in RATED_PATHS and caller.limits is not None and scope.get("method") == "POST":
                caller.limits.admit()
        except APIError as exc:
            await send_error(send, exc, path)
            return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """413 for request bodies over `max_bytes`, whether announced by
    Content-Length or not; the body is read at most once, then replayed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _too_large(self, scope: Scope, send: Send, max_bytes: int) -> None:
        error = RequestTooLarge(f"request body is larger than {max_bytes} bytes")
        await send_error(send, error, scope.get("path", ""), close=True)

    def _limit(self, scope: Scope) -> int:
        """/detokenize takes at most a context of ids: ~12 bytes each, written
        out. Its body is refused before it is read, not parsed on the loop."""
        ctx = getattr(scope["app"].state, "ctx", None)
        if scope.get("path") == "/detokenize" and ctx is not None:
            return min(self.max_bytes, 12 * ctx.engine.info.max_model_len + 4096)
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        max_bytes = self._limit(scope)
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > max_bytes:
            await self._too_large(scope, send, max_bytes)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                await self._too_large(scope, send, max_bytes)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # then: wait for the disconnect, as usual

        await self.app(scope, replay, send)
