"""The service `python -m bench.http_calls` calls: aiohttp in a process of its own,
answering every request to /step with 200 {"ok": true} at once, so what is
measured is the caller, not the service.

    python -m bench.http_service --port 8098
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

# One prebuilt body: the service should cost as little per request as aiohttp allows.
_BODY = b'{"ok": true}'


async def step(request: web.Request) -> web.Response:
    await request.read()  # drain the body so keep-alive connections stay reusable
    return web.Response(body=_BODY, content_type="application/json")


async def health(_: web.Request) -> web.Response:
    return web.Response(body=_BODY, content_type="application/json")


def app() -> web.Application:
    application = web.Application()
    application.router.add_route("*", "/step", step)
    application.router.add_get("/health", health)
    return application


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.http_service", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    uvloop.install()
    web.run_app(app(), host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
