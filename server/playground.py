"""The playground: a chat page served by the gateway itself (GET / and
/playground), static files shipped in the package, no build step.

The page uses only the public API, with the caller's own key (asked for in
the page, kept in sessionStorage), so it is served without a key. Its
responses carry a Content-Security-Policy that allows only its own script and
stylesheet and connections to this server, and forbids framing;
`--no-playground` turns the page off.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

PAGE_PATHS = frozenset({"/", "/playground", "/playground/config"})
STATIC_PREFIX = "/playground/static/"
_TYPES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def is_page_path(path: str) -> bool:
    """Paths the page's files live at (served without an API key)."""
    return path in PAGE_PATHS or path.startswith(STATIC_PREFIX)


def _read(name: str) -> bytes:
    return resources.files("lemur.server").joinpath("playground", name).read_bytes()


def _file(name: str, media_type: str) -> Response:
    return Response(_read(name), media_type=media_type, headers=SECURITY_HEADERS)


router = APIRouter(include_in_schema=False)


@router.get("/")
@router.get("/playground")
async def page() -> Response:
    return _file("index.html", "text/html; charset=utf-8")


@router.get("/playground/config")
async def config(request: Request) -> JSONResponse:
    """What the page needs before its first API call: whether to ask for a key."""
    ctx = request.app.state.ctx
    return JSONResponse({"auth_required": ctx.keys.enabled}, headers={"Cache-Control": "no-store"})


@router.get(STATIC_PREFIX + "{name}")
async def static(name: str) -> Response:
    media_type = _TYPES.get(name)
    if media_type is None:  # only the page's own files, never a path
        raise StarletteHTTPException(404, "not found")
    return _file(name, media_type)
