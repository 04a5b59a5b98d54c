"""The web UI's own routes: the page shell at /ui (and every /ui/... page path,
which the front end routes itself) and its static assets at /ui/static/<name>.

They are public: they carry no data, only the code that asks for a token when
the API wants one and then calls the API routes with it. Every answer has a
strict Content-Security-Policy (scripts, styles and connections only from this
origin, no inline script or style, no framing), so text an execution carries
can never run in the page even if a rendering bug let it through."""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath

from engine.errors import NotFound

PUBLIC = {"public": True}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                    "Cross-Origin-Opener-Policy": "same-origin"}
TYPES = {".html": "text/html", ".js": "text/javascript",
         ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png", ".txt": "text/plain"}


class Asset:
    __slots__ = ("body", "etag", "media_type")

    def __init__(self, body: bytes, media_type: str) -> None:
        self.body, self.media_type = body, media_type
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def load_assets() -> dict[str, Asset]:
    """Every file of static/, read once: the set is fixed when the package is installed."""
    out: dict[str, Asset] = {}
    for entry in resources.files("engine.api.ui").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in TYPES:
            out[entry.name] = Asset(entry.read_bytes(), TYPES[suffix])
    return out


ASSETS = load_assets()
SHELL = "index.html"


def _answer(request: Request[Any, Any, Any], asset: Asset, cache: str) -> Response[bytes]:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": cache}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(b"", status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@get(["/ui", "/ui/"], opt=PUBLIC, include_in_schema=False, name="ui-shell")
async def shell(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _answer(request, ASSETS[SHELL], "no-cache")


@get("/ui/{page:path}", opt=PUBLIC, include_in_schema=False, name="ui-page")
async def page(request: Request[Any, Any, Any], page: FromPath[str]) -> Response[bytes]:
    """A static asset, or the shell for a page path (the front end reads the path)."""
    name = page.lstrip("/")
    if name.startswith("static/"):
        asset = ASSETS.get(name.removeprefix("static/"))
        if asset is None:
            raise NotFound(f"no UI asset {name!r}")
        # no-cache: revalidated by ETag, so an upgrade is picked up at once
        return _answer(request, asset, "no-cache")
    return _answer(request, ASSETS[SHELL], "no-cache")


ROUTES: list[Any] = [shell, page]
