"""`foldflow api`: serve the HTTP API (engine/api) for one deployment."""

from __future__ import annotations

import argparse
from typing import Any

from engine.runtime.lifecycle import VERB_SETTINGS, setting_flags


async def cmd_api(args: argparse.Namespace) -> int:
    from engine.api.server import serve_api
    from engine.api.settings import api_settings
    from engine.ops.cli import _settings

    api = api_settings(host=args.host, port=args.port, insecure_no_auth=args.insecure_no_auth or None)
    return await serve_api(_settings(args), api)


def add_commands(sub: Any) -> None:
    x = sub.add_parser("api", parents=[setting_flags(*VERB_SETTINGS["api"], log_level=True)],
                       help="serve the HTTP API: REST routes, live streams (SSE, WebSocket), OpenAPI at /openapi.json")
    x.add_argument("--host", help="address to bind (FOLDFLOW_API_HOST, default 127.0.0.1)")
    x.add_argument("--port", type=int, help="port (FOLDFLOW_API_PORT, default 8080)")
    x.add_argument("--insecure-no-auth", action="store_true",
                   help="serve a non-loopback address with no JWT secret or JWKS configured")
    x.set_defaults(fn=cmd_api)
