"""Typed API errors and the one place they become an error envelope.

Routes and the serving layer raise these; `install_error_handlers` turns every
failure (ours, FastAPI's validation errors, unknown paths, unexpected faults)
into OpenAI's `{"error": {"message", "type", "param", "code"}}` with the right
status, or, on Anthropic's Messages API (`/v1/messages...`), into Anthropic's
`{"type": "error", "error": {"type", "message"}}` with its error types.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("lemur.errors")


class APIError(Exception):
    status_code = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def anthropic_body(self) -> dict[str, Any]:
        fallback = "api_error" if self.status_code >= 500 else "invalid_request_error"
        kind = ANTHROPIC_TYPES.get(self.status_code, fallback)
        return {"type": "error", "error": {"type": kind, "message": self.message}}

    def body_for(self, path: str) -> dict[str, Any]:
        """The envelope of the API `path` belongs to."""
        return self.anthropic_body() if is_anthropic(path) else self.body()

    def headers(self) -> dict[str, str] | None:
        return None


class InvalidRequest(APIError):
    status_code = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ModelNotFound(APIError):
    status_code = 404
    type = "invalid_request_error"
    code = "model_not_found"


class AuthenticationFailed(APIError):
    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class NotFound(APIError):
    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class ServiceUnavailable(APIError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"


class RequestTimeout(APIError):
    status_code = 504
    type = "server_error"
    code = "request_timeout"


class InternalServerError(APIError):
    status_code = 500
    type = "server_error"
    code = "internal_error"


# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors).
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def is_anthropic(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


class RequestTooLarge(APIError):
    status_code = 413
    type = "invalid_request_error"
    code = "request_too_large"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: APIError, path: str = "") -> JSONResponse:
    return JSONResponse(exc.body_for(path), status_code=exc.status_code, headers=exc.headers())


def validation_param(loc: tuple[Any, ...]) -> str | None:
    # loc looks like ("body", "messages", 0, "role"); drop the "body" prefix and
    # the union-member tags pydantic inserts ("literal['none','auto']", "function-after[...]").
    parts = [str(p) for p in loc if p != "body" and (isinstance(p, int) or str(p).isidentifier())]
    return ".".join(parts) or None


# The tags pydantic gives the members of a plain union (`str | list[...]`).
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|list|dict|tuple)(\[.*\])?$")


def _telling(errors: list[Any]) -> list[Any]:
    """The errors worth reporting: a union's members the value was not even
    the type of (`input.str: should be a valid string`, beside the list
    member's real complaint) are dropped, while others remain."""

    def mismatched_member(error: Any) -> bool:
        loc = error.get("loc") or ()
        return str(error.get("type", "")).endswith("_type") and bool(loc) and bool(_UNION_MEMBER.match(str(loc[-1])))

    return [e for e in errors if not mismatched_member(e)] or errors


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = _telling(list(exc.errors()))
    if not errors:
        return "invalid request", None
    first = errors[0]
    param = (first.get("ctx") or {}).get("param") or validation_param(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    if param is None and first.get("type") in ("missing", "model_attributes_type", "dict_type"):
        return "request body must be a JSON object (send Content-Type: application/json)", None
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return (f"{param}: {msg}{more}" if param else f"{msg}{more}"), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(InvalidRequest(message, param=param), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = APIError(str(exc.detail), code={404: "not_found", 405: "method_not_allowed"}.get(exc.status_code))
        error.status_code = exc.status_code
        error.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(error, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(InternalServerError("internal server error"), request.url.path)
