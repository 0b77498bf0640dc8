"""``GET /dashboard``: the usage page, a static page shipped in this package (HTML, CSS and
plain JavaScript drawing its chart as SVG: no build step, nothing loaded from anywhere else)
over ``GET /v2/usage`` and ``POST /v2/billing/setup``.

The files are read once when the routes are added. Their Content-Security-Policy allows only
this origin's scripts, styles and requests, so a pasted API key can only ever go to this API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from fastapi import FastAPI
from starlette.responses import Response

PATH = "/dashboard"
_FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(content: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def serve() -> Response:
        return Response(content, media_type=media_type, headers=_HEADERS)

    return serve


def add_dashboard_routes(app: FastAPI) -> None:
    package = resources.files(__name__)
    for suffix, (name, media_type) in _FILES.items():
        serve = _file((package / name).read_bytes(), media_type)
        app.add_api_route(PATH + suffix, serve, methods=["GET"], include_in_schema=False)
